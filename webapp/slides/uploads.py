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
        self.request_length = 0  # not "content_length": new_file() overwrites that per file

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.request_length = content_length or 0
        return None  # let the parser run; raising here would escape Django's handling

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            if getattr(self, "file", None) is not None:
                self.file.close()  # a NamedTemporaryFile: closing deletes the partial data
            # Draining a body many times the limit would waste the worker: drop the connection instead.
            raise StopUpload(connection_reset=self.request_length > 2 * self.limit)
        return super().receive_data_chunk(raw_data, start)
