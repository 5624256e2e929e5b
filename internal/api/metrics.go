package api

import "net/http"

// metrics serves Options.Metrics. Without it (METRICS_ADDR serves them
// apart from the API), the route says where they are.
func (s *server) metrics(w http.ResponseWriter, r *http.Request) *apiError {
	if s.opts.Metrics == nil {
		return &apiError{status: http.StatusNotFound, code: CodeNotFound, message: "metrics are not served on the API's address: this server serves them on METRICS_ADDR"}
	}
	s.opts.Metrics.ServeHTTP(w, r)
	return nil
}
