package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/stagefleet/stagefleet/internal/fleet"
)

// Error codes of the previous server's envelope.
const (
	CodeValidation        = "VALIDATION_ERROR"
	CodeUnauthorized      = "UNAUTHORIZED"
	CodeForbidden         = "FORBIDDEN"
	CodeConflict          = "CONFLICT"
	CodeMethodNotAllowed  = "METHOD_NOT_ALLOWED"
	CodeNotFound          = "NOT_FOUND"
	CodeNotPublishing     = "NOT_PUBLISHING"
	CodeRateLimited       = "RATE_LIMITED"
	CodeStageFull         = "STAGE_FULL"
	CodeStageLimitReached = "STAGE_LIMIT_REACHED"
	CodeTokenFailed       = "TOKEN_GENERATION_FAILED"
	CodeInternal          = "INTERNAL_ERROR"
)

// Error codes of GET /ws, stagefleet's own.
const (
	// CodeUpgradeRequired: GET /ws without a WebSocket handshake (426).
	CodeUpgradeRequired = "UPGRADE_REQUIRED"
	// CodeTooManyConnections: WS_MAX_CLIENTS connections are open (503).
	CodeTooManyConnections = "TOO_MANY_CONNECTIONS"
)

type successBody struct {
	Success   bool   `json:"success"`
	Data      any    `json:"data"`
	Message   string `json:"message,omitempty"`
	Timestamp string `json:"timestamp"`
}

type errorBody struct {
	Success   bool      `json:"success"`
	Error     errorInfo `json:"error"`
	Timestamp string    `json:"timestamp"`
}

type errorInfo struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Details any    `json:"details,omitempty"`
}

func timestamp() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func ok(w http.ResponseWriter, status int, data any, message string) {
	writeJSON(w, status, successBody{Success: true, Data: data, Message: message, Timestamp: timestamp()})
}

// apiError is a failure answered with the error envelope.
type apiError struct {
	status     int
	code       string
	message    string
	details    any
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: CodeValidation, message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.retryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, e.status, errorBody{Error: errorInfo{Code: e.code, Message: e.message, Details: e.details}, Timestamp: timestamp()})
}

// fromFleet maps a fleet error to its status and code; anything else is an
// internal error whose detail stays in the log.
func fromFleet(err error) *apiError {
	var fe *fleet.Error
	msg := "internal error"
	var retry time.Duration
	var details map[string]any
	if errors.As(err, &fe) {
		msg, retry, details = fe.Msg, fe.RetryAfter, fe.Details
	}
	e := &apiError{message: msg, retryAfter: retry}
	if details != nil {
		e.details = details
	}
	switch {
	case errors.Is(err, fleet.ErrInvalid):
		e.status, e.code = http.StatusBadRequest, CodeValidation
	case errors.Is(err, fleet.ErrNotFound), errors.Is(err, fleet.ErrNotLive):
		e.status, e.code = http.StatusNotFound, CodeNotFound
	case errors.Is(err, fleet.ErrNotPublishing):
		e.status, e.code = http.StatusConflict, CodeNotPublishing
	case errors.Is(err, fleet.ErrForbidden):
		e.status, e.code = http.StatusForbidden, CodeForbidden
	case errors.Is(err, fleet.ErrConflict):
		e.status, e.code = http.StatusConflict, CodeConflict
	case errors.Is(err, fleet.ErrStageFull):
		e.status, e.code = http.StatusServiceUnavailable, CodeStageFull
	case errors.Is(err, fleet.ErrStageLimit):
		e.status, e.code = http.StatusServiceUnavailable, CodeStageLimitReached
	case errors.Is(err, fleet.ErrToken):
		e.status, e.code = http.StatusInternalServerError, CodeTokenFailed
	default:
		e.status, e.code = http.StatusInternalServerError, CodeInternal
	}
	return e
}

// decode reads a JSON object body into v. An empty body is an empty object,
// so that missing fields are reported as such. Unknown fields are allowed:
// apps built for the previous server may send more than is read.
func decode(r *http.Request, v any) *apiError {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return &apiError{status: http.StatusRequestEntityTooLarge, code: CodeValidation,
				message: fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit)}
		}
		return badRequest("reading request body: %v", err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	// The JSON decoder would turn invalid UTF-8 into U+FFFD without a
	// word, so that two different ids could become one.
	if !utf8.Valid(raw) {
		return badRequest("request body must be valid UTF-8")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr) && typeErr.Field != "":
			return badRequest("field %s must be %s, not %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
		case errors.As(err, &typeErr):
			return badRequest("request body must be a JSON object, not %s", typeErr.Value)
		case errors.As(err, &syntaxErr):
			return badRequest("request body is not valid JSON (at byte %d): %v", syntaxErr.Offset, err)
		default:
			return badRequest("request body is not valid JSON: %v", err)
		}
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	default:
		return "a number"
	}
}
