from django.urls import path

from . import views

app_name = "participants"

urlpatterns = [
    path("s/<slug:slug>/", views.entry, name="entry"),
    path("s/<slug:slug>/consent/", views.consent, name="consent"),
    path("s/<slug:slug>/pre-test/", views.pre_test, name="pre_test"),
    path("s/<slug:slug>/explanation/", views.explanation, name="explanation"),
    path("s/<slug:slug>/post-test/", views.post_test, name="post_test"),
    path("s/<slug:slug>/questionnaire/", views.questionnaire, name="questionnaire"),
    path("s/<slug:slug>/debrief/", views.debrief, name="debrief"),
    path("s/<slug:slug>/done/", views.done, name="done"),
    path("s/<slug:slug>/asset/<path:path>", views.asset, name="asset"),
]
