import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from config.middleware import BodyLimit  # noqa: E402  (needs the settings and the apps loaded above)

# The body limit wraps Django: Django's ASGI handler reads (and past FILE_UPLOAD_MAX_MEMORY_SIZE spools to a
# temporary file) the whole body before any middleware of its own runs.
application = BodyLimit(django_application)
