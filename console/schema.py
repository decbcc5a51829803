"""OpenAPI details drf-spectacular cannot infer: the bearer-token scheme and the error answers of each operation.

schemathesis (and any client generator) treats a status the schema does not list as a bug, so every
operation documents the errors it can give: 401, 403 and 429 always, 400 when it takes input, 404
when its path names something. 409 is declared by the views that raise it.
"""
from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
DESCRIPTIONS = {
    "400": "The input is not valid (`fields`), or the study file is not (`errors`).",
    "401": "No credentials, or a wrong, revoked or expired token.",
    "403": "Your role on this study does not allow this, a read token tried to change something, "
           "or the request came from another site's page.",
    "404": "No such study for you (a study you hold no role on is not revealed), or no such object in it.",
    "409": "The study or the job is not in a state that allows this.",
    "429": "Too many requests: wait for the seconds in `Retry-After`.",
}


TAG_AS_STUDY = ("launch", "pause", "resume", "close")
# What each path parameter's URL converter accepts (console/api_urls.py); anything else is not an API URL at all.
_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
PATH_PARAMETERS = {
    "slug": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
    "pseudonym": {"type": "string", "pattern": "^p_[0-9a-f]{16}$", "example": "p_3f2a9c0d81b7e645"},
    "username": {"type": "string", "pattern": r"^[\w@+-][\w.@+-]*$", "maxLength": 150},
    "job_id": _ID,
    "token_id": _ID,
}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "console.authentication.BearerTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A personal API token: `Authorization: Bearer tb_...` (docs/api.md)."}


def error_responses_hook(result, generator, request, public):
    """Add the error answers each operation can give, in the one error shape (`ErrorOut`); tag by resource."""
    for path, operations in result.get("paths", {}).items():
        parts = [p for p in path.split("/") if p and p != "api" and not p.startswith("{")]
        tag = parts[1] if len(parts) > 1 and parts[0] == "studies" and parts[1] not in TAG_AS_STUDY else parts[0]
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            operation["tags"] = [tag]
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path":
                    parameter["schema"] = PATH_PARAMETERS.get(parameter["name"], parameter["schema"])
            responses = operation.setdefault("responses", {})
            codes = ["401", "403", "429"]
            takes_input = "requestBody" in operation or any(
                p.get("in") == "query" for p in operation.get("parameters", []))
            if takes_input:
                codes.append("400")
            if "{" in path:
                codes.append("404")
            for code in codes:
                responses.setdefault(code, {"description": DESCRIPTIONS[code],
                                            "content": {"application/json": {"schema": ERROR_REF}}})
            for code, response in responses.items():
                if code in DESCRIPTIONS and response.get("description", "") in ("", "No response body"):
                    response["description"] = DESCRIPTIONS[code]
            if "429" in responses:
                responses["429"].setdefault("headers", {"Retry-After": {
                    "schema": {"type": "integer"}, "description": "seconds to wait"}})
    return result
