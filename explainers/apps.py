from django.apps import AppConfig


class ExplainersConfig(AppConfig):
    name = "explainers"

    def ready(self) -> None:
        from studies.targets import target_kind_register

        from .targets import llm_target_keys

        target_kind_register("llm", llm_target_keys)
