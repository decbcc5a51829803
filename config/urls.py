from django.contrib import admin
from django.db import connection
from django.http import HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.urls import include, path

from console.forms import AdminLoginForm


# The admin's login goes through the console's limits (console.logins: the authentication backend) and
# says, as the console's does, when a login is locked.
admin.site.login_form = AdminLoginForm


def healthz(request):
    """Answer 200 when the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def favicon(request):
    """Send the browser's own request for /favicon.ico to the icon among the static files."""
    response = HttpResponseRedirect(static("favicon.ico"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("", include("console.urls")),
    path("", include("participants.urls")),
]
