package fleet

import (
	"errors"
	"fmt"
	"time"
)

// Kinds of failure; the API maps each to a status and code. Test with
// errors.Is.
var (
	ErrInvalid       = errors.New("invalid request")
	ErrNotFound      = errors.New("not found")
	ErrNotLive       = errors.New("host not live")
	ErrNotPublishing = errors.New("host not publishing")
	ErrForbidden     = errors.New("forbidden")
	// ErrConflict: the request names a resource in a state it does not
	// match (another participant's seat, a broadcast being ended).
	ErrConflict    = errors.New("conflict")
	ErrStageFull   = errors.New("stage full")
	ErrStageLimit  = errors.New("stage limit reached")
	ErrToken       = errors.New("token generation failed")
	ErrUnavailable = errors.New("dependency unavailable")
)

// Error is a failure with a message meant for the API's caller.
type Error struct {
	Kind error
	Msg  string
	// RetryAfter, when set, tells the caller when trying again may work.
	RetryAfter time.Duration
	// Details, when set, go with the message to the caller (e.g. the
	// viewer count that makes a stage impossible to delete).
	Details map[string]any
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

func fail(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

func failWrap(kind error, err error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}
