import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from webapp.settings import make_data_directories

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
application = get_wsgi_application()
make_data_directories(settings)  # a web server starting on a fresh machine: uploads and the drop folder work
