// The API docs page (/api/docs/): Swagger UI over the generated schema.
// "Try it out" runs with the page's session (same origin); unsafe methods need the CSRF token,
// read from the csrftoken cookie, or an "Authorize" bearer token instead.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof window.SwaggerUIBundle !== "function") {
    return;
  }

  function cookie(name) {
    var found = document.cookie.split("; ").filter(function (part) {
      return part.indexOf(name + "=") === 0;
    })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
  }

  window.SwaggerUIBundle({
    url: root.getAttribute("data-schema-url"),
    domNode: root,
    deepLinking: true,
    persistAuthorization: false,
    tryItOutEnabled: false,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (request) {
      var method = (request.method || "GET").toUpperCase();
      if (["GET", "HEAD", "OPTIONS", "TRACE"].indexOf(method) === -1 && cookie("csrftoken")) {
        request.headers["X-CSRFToken"] = cookie("csrftoken");
      }
      return request;
    }
  });
})();
