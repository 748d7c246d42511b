package openapi

import (
	"html"
	"net/http"

	"github.com/labstack/echo/v4"
)

// The paths FastAPI serves by default. Like FastAPI, the document does not describe them.
const (
	PathJSON  = "/openapi.json"
	PathDocs  = "/docs"
	PathRedoc = "/redoc"
)

// The pages load their code from the same CDN and major versions as FastAPI's.
const (
	swaggerJS  = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
	swaggerCSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
	redocJS    = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"
	favicon    = "https://fastapi.tiangolo.com/img/favicon.png"
)

// Serve encodes d once and mounts /openapi.json, /docs and /redoc on e.
func Serve(e *echo.Echo, d *Document) error {
	doc, err := d.JSON()
	if err != nil {
		return err
	}
	docs, redoc := []byte(SwaggerUI(d.Info.Title+" - Swagger UI", PathJSON)), []byte(ReDoc(d.Info.Title+" - ReDoc", PathJSON))
	e.GET(PathJSON, func(c echo.Context) error { return c.JSONBlob(http.StatusOK, doc) })
	e.GET(PathDocs, func(c echo.Context) error { return c.HTMLBlob(http.StatusOK, docs) })
	e.GET(PathRedoc, func(c echo.Context) error { return c.HTMLBlob(http.StatusOK, redoc) })
	return nil
}

// SwaggerUI is the page FastAPI serves at /docs: Swagger UI with FastAPI's default
// parameters, reading the document at specURL. FastAPI also passes an OAuth2 redirect URL;
// recsys has no authentication, so the page and its redirect route are left out.
func SwaggerUI(title, specURL string) string {
	return `<!DOCTYPE html>
<html>
<head>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="` + swaggerCSS + `">
<link rel="shortcut icon" href="` + favicon + `">
<title>` + html.EscapeString(title) + `</title>
</head>
<body>
<div id="swagger-ui">
</div>
<script src="` + swaggerJS + `"></script>
<script>
const ui = SwaggerUIBundle({
    url: '` + specURL + `',
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": true,
    "showExtensions": true,
    "showCommonExtensions": true,
    presets: [
        SwaggerUIBundle.presets.apis,
        SwaggerUIBundle.SwaggerUIStandalonePreset
    ],
})
</script>
</body>
</html>
`
}

// ReDoc is the page FastAPI serves at /redoc, reading the document at specURL.
func ReDoc(title, specURL string) string {
	return `<!DOCTYPE html>
<html>
<head>
<title>` + html.EscapeString(title) + `</title>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link href="https://fonts.googleapis.com/css?family=Montserrat:300,400,700|Roboto:300,400,700" rel="stylesheet">
<link rel="shortcut icon" href="` + favicon + `">
<style>
  body {
    margin: 0;
    padding: 0;
  }
</style>
</head>
<body>
<noscript>
    ReDoc requires Javascript to function. Please enable it to browse the documentation.
</noscript>
<redoc spec-url="` + html.EscapeString(specURL) + `"></redoc>
<script src="` + redocJS + `"> </script>
</body>
</html>
`
}
