package emulator

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error type names as the IVS real-time model spells them; clients match on
// the x-amzn-ErrorType header.
const (
	errValidation    = "ValidationException"
	errAccessDenied  = "AccessDeniedException"
	errPending       = "PendingVerification"
	errQuota         = "ServiceQuotaExceededException"
	errNotFound      = "ResourceNotFoundException"
	errConflict      = "ConflictException"
	errInternal      = "InternalServerException"
	errThrottling    = "ThrottlingException"
	errSerialization = "SerializationException"
	// errUnknownOperation is not in the model: it answers a path that names
	// no operation, a resource that does not exist (404).
	errUnknownOperation = "UnknownOperationException"
)

// errorStatus maps every error type to the HTTP status the model gives it.
var errorStatus = map[string]int{
	errValidation:       http.StatusBadRequest,
	errAccessDenied:     http.StatusForbidden,
	errPending:          http.StatusForbidden,
	errQuota:            http.StatusPaymentRequired,
	errNotFound:         http.StatusNotFound,
	errConflict:         http.StatusConflict,
	errInternal:         http.StatusInternalServerError,
	errThrottling:       http.StatusTooManyRequests,
	errSerialization:    http.StatusBadRequest,
	errUnknownOperation: http.StatusNotFound,
}

// apiError is an error the emulator answers with, shaped like an IVS error.
type apiError struct {
	Type    string
	Message string
}

func (e *apiError) Error() string { return e.Type + ": " + e.Message }

func newError(typ, format string, args ...any) *apiError {
	return &apiError{Type: typ, Message: fmt.Sprintf(format, args...)}
}

func validationError(format string, args ...any) *apiError {
	return newError(errValidation, format, args...)
}

func notFound(format string, args ...any) *apiError {
	return newError(errNotFound, format, args...)
}

// writeError writes e the way IVS does: status, x-amzn-ErrorType header and a
// body carrying the text both as exceptionMessage (the model's member) and as
// message (what the JS SDK reads).
func writeError(w http.ResponseWriter, e *apiError) {
	status, ok := errorStatus[e.Type]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeErrorStatus(w, status, e)
}

// writeErrorStatus is writeError with a status of the caller's choosing, for
// the control API's errors that IVS does not have.
func writeErrorStatus(w http.ResponseWriter, status int, e *apiError) {
	setSecurityHeaders(w.Header())
	w.Header().Set("x-amzn-ErrorType", e.Type)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{
		"exceptionMessage": e.Message,
		"message":          e.Message,
	})
}

// setSecurityHeaders adds the CORS and security headers the model declares on
// replication responses and errors.
func setSecurityHeaders(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Expose-Headers", "Access-Control-Allow-Origin,Access-Control-Expose-Headers,Cache-Control,Content-Security-Policy,Strict-Transport-Security,X-Content-Type-Options,X-Frame-Options,x-amzn-ErrorType")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Content-Security-Policy", "default-src 'self'")
	h.Set("Strict-Transport-Security", "max-age=47304000; includeSubDomains")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
}
