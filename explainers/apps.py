from django.apps import AppConfig


class ExplainersConfig(AppConfig):
    name = "explainers"
