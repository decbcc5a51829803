from django.urls import path

from . import chat_views, views

app_name = "participants"

urlpatterns = [
    path("s/<slug:slug>/", views.entry, name="entry"),
    path("s/<slug:slug>/consent/", views.consent, name="consent"),
    path("s/<slug:slug>/pre-test/", views.pre_test, name="pre_test"),
    path("s/<slug:slug>/explanation/", views.explanation, name="explanation"),
    path("s/<slug:slug>/chat/send/", chat_views.chat_send, name="chat_send"),
    path("s/<slug:slug>/chat/retry/<int:turn_id>/", chat_views.chat_retry, name="chat_retry"),
    path("s/<slug:slug>/chat/events/<int:turn_id>/", chat_views.chat_events, name="chat_events"),
    path("s/<slug:slug>/post-test/", views.post_test, name="post_test"),
    path("s/<slug:slug>/questionnaire/", views.questionnaire, name="questionnaire"),
    path("s/<slug:slug>/debrief/", views.debrief, name="debrief"),
    path("s/<slug:slug>/done/", views.done, name="done"),
    path("s/<slug:slug>/withdraw/", views.withdraw, name="withdraw"),
    path("s/<slug:slug>/device/", views.device, name="device"),
    path("s/<slug:slug>/asset/<path:path>", views.asset, name="asset"),
]
