// Starts Swagger UI on /docs. It is a file, not an inline script, so the page's CSP can keep
// script-src 'self'.
"use strict";

(() => {
  const root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis],
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null, // else the document's address goes to an online validator, for its badge
  });
})();
