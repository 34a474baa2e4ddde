import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from webapp.settings import make_data_directories

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
application = get_asgi_application()
make_data_directories(settings)  # a web server starting on a fresh machine: uploads and the drop folder work
