"""A streaming upload handler that refuses files over SLIDE_UPLOAD_MAX_BYTES as they arrive.

Django's TemporaryFileUploadHandler already writes chunks to FILE_UPLOAD_TEMP_DIR without holding
the file in memory; this one also stops reading once the limit is passed and removes the partial file.
"""
from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler


class SizeLimitedUploadHandler(TemporaryFileUploadHandler):
    def __init__(self, request=None):
        super().__init__(request)
        self.limit = settings.SLIDE_UPLOAD_MAX_BYTES
        self.received = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > self.limit + 1024**2:  # allow for multipart overhead
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        return None

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            if getattr(self, "file", None) is not None:
                self.file.close()  # a NamedTemporaryFile: closing deletes the partial data
            raise StopUpload(connection_reset=False)
        return super().receive_data_chunk(raw_data, start)
