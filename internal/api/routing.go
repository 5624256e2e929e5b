package api

import (
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/rs/cors"
)

// routeMethods are the methods some route answers, tried to fill Allow.
var routeMethods = func() []string {
	var ms []string
	for _, rt := range routes {
		if !slices.Contains(ms, rt.method) {
			ms = append(ms, rt.method)
		}
	}
	slices.Sort(ms)
	return ms
}()

// literalPaths maps the routes' literal paths (no wildcard) to their
// methods.
var literalPaths = func() map[string][]string {
	m := map[string][]string{}
	for _, rt := range routes {
		if !strings.Contains(rt.path, "{") {
			m[rt.path] = append(m[rt.path], rt.method)
		}
	}
	return m
}()

// unrouted answers what no route takes, in the envelope: 405 with Allow
// when the path is a route's under another method, 404 otherwise.
func unrouted(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		allow, literal := literalPaths[r.URL.Path]
		if !literal {
			for _, m := range routeMethods {
				probe := r.Clone(r.Context())
				probe.Method = m
				if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/" {
					allow = append(allow, m)
				}
			}
		}
		if len(allow) == 0 {
			writeError(w, &apiError{status: http.StatusNotFound, code: CodeNotFound, message: "no route " + r.Method + " " + r.URL.Path})
			return
		}
		methodNotAllowed(w, r, allow)
	})
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow []string) {
	if slices.Contains(allow, http.MethodGet) && !slices.Contains(allow, http.MethodHead) {
		// The server answers HEAD wherever it answers GET.
		allow = append(slices.Clone(allow), http.MethodHead)
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, &apiError{status: http.StatusMethodNotAllowed, code: CodeMethodNotAllowed,
		message: r.Method + " is not allowed on " + r.URL.Path + "; use " + strings.Join(allow, " or ")})
}

// notShadowed keeps a wildcard route from taking a literal route's path
// under another method: GET /api/stage/replication/stop is a wrong method
// (405), not a stage ARN that fails to parse (400).
func notShadowed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if allow, ok := literalPaths[r.URL.Path]; ok {
			methodNotAllowed(w, r, allow)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cleanPaths refuses, in the envelope, a path that is not in its clean
// form (//, /./, /../), which the mux would answer with a plain-text
// redirect: a client that sends one has a bug worth seeing.
func cleanPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		if p == "" || clean != p {
			writeError(w, badRequest("the path %q is not in clean form (no //, /./ or /../); use %q", p, clean))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withCORS answers preflight requests and sets the CORS headers for the
// configured origins only; none configured, no cross-origin access.
func withCORS(origins []string, next http.Handler) http.Handler {
	if len(origins) == 0 {
		return next
	}
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete},
		AllowedHeaders: []string{"Content-Type", "X-Api-Key", "X-Request-Id"},
		ExposedHeaders: []string{"X-Request-Id", "Retry-After"},
		MaxAge:         600,
	}).Handler(next)
}
