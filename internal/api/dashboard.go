package api

import (
	"io/fs"
	"net/http"
	"path"

	"github.com/stagefleet/stagefleet/internal/dashboard"
)

// dashboardCSP lets the dashboard load and call only this server: the page
// keeps the API key in sessionStorage, so no script from elsewhere may run
// in it, and no other site may frame it.
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboardPage serves the operator's dashboard. It is open: the page holds
// no data, and asks for the API key itself.
func (s *server) dashboardPage(w http.ResponseWriter, r *http.Request) *apiError {
	return serveDashboard(w, r, dashboard.Page)
}

// dashboardFile serves what the dashboard loads: its script, style and the
// vendored chart library.
func (s *server) dashboardFile(w http.ResponseWriter, r *http.Request) *apiError {
	return serveDashboard(w, r, path.Join("static", r.PathValue("file")))
}

func serveDashboard(w http.ResponseWriter, r *http.Request, name string) *apiError {
	files := dashboard.Files()
	if st, err := fs.Stat(files, name); err != nil || st.IsDir() {
		return &apiError{status: http.StatusNotFound, code: CodeNotFound, message: "the dashboard has no file " + r.URL.Path}
	}
	h := w.Header()
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// Revalidated on every load (a 304 while the ETag holds), so that a new
	// binary never meets an old script in the browser's cache.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", dashboard.ETag(name))
	http.ServeFileFS(w, r, files, name)
	return nil
}
