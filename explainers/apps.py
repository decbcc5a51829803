from django.apps import AppConfig


class ExplainersConfig(AppConfig):
    name = "explainers"

    def ready(self) -> None:
        from studies.targets import target_kind_register

        def llm_target_keys(spec, assets):
            from .targets import llm_target_keys  # the SDKs load only when a target is asked

            return llm_target_keys(spec, assets)

        target_kind_register("llm", llm_target_keys)
