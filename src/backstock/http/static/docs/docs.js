// Swagger UI over Backstock's own /openapi.json, with nothing fetched from anywhere else.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: false,
    displayOperationId: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: (request) => {
      // "Try it out" answers need the revision header every operation takes.
      request.headers.revision = request.headers.revision || "2026-10-15";
      return request;
    },
  });
});
