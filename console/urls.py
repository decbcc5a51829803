"""The researcher side: pages under /console/ (console.views), the REST API under /api/ (console.api)."""
from django.urls import include, path

urlpatterns = [
    path("console/", include("console.page_urls")),
    path("api/", include("console.api_urls")),
]
