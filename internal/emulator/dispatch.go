package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"
)

// maxRequestBody bounds what one API call may send; IVS requests are small.
const maxRequestBody = 1 << 20

// operation serves one IVS API call. body is the request's JSON, already
// validated against the model; it runs with e.mu held.
type operation func(e *Emulator, body []byte) (any, *apiError)

var operations = map[string]operation{
	"CreateStage":                 (*Emulator).createStage,
	"GetStage":                    (*Emulator).getStage,
	"UpdateStage":                 (*Emulator).updateStage,
	"DeleteStage":                 (*Emulator).deleteStage,
	"ListStages":                  (*Emulator).listStages,
	"CreateParticipantToken":      (*Emulator).createParticipantToken,
	"ImportPublicKey":             (*Emulator).importPublicKey,
	"GetPublicKey":                (*Emulator).getPublicKey,
	"ListPublicKeys":              (*Emulator).listPublicKeys,
	"DeletePublicKey":             (*Emulator).deletePublicKey,
	"GetParticipant":              (*Emulator).getParticipant,
	"ListParticipants":            (*Emulator).listParticipants,
	"DisconnectParticipant":       (*Emulator).disconnectParticipant,
	"StartParticipantReplication": (*Emulator).startParticipantReplication,
	"StopParticipantReplication":  (*Emulator).stopParticipantReplication,
	"ListParticipantReplicas":     (*Emulator).listParticipantReplicas,
	"GetStageSession":             (*Emulator).getStageSession,
	"ListStageSessions":           (*Emulator).listStageSessions,
	"TagResource":                 (*Emulator).tagResource,
	"UntagResource":               (*Emulator).untagResource,
	"ListTagsForResource":         (*Emulator).listTagsForResource,
}

// OpCounter counts what happened to the calls of one operation.
type OpCounter struct {
	Calls     int `json:"calls"`
	Throttled int `json:"throttled"`
	Faults    int `json:"faults"`
	Errors    int `json:"errors"`
}

// Fault makes an operation slow or fail on purpose.
type Fault struct {
	Operation string  `json:"operation"`
	ErrorRate float64 `json:"errorRate"`
	ErrorType string  `json:"errorType,omitempty"`
	LatencyMS int     `json:"latencyMs,omitempty"`
}

func (e *Emulator) serveOperation(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("operation")
	if _, ok := operations[op]; !ok {
		writeError(w, newError(errUnknownOperation, "unknown operation %q", op))
		return
	}
	body, aerr := readBody(w, r)
	if aerr != nil {
		e.serve(w, r, op, nil, aerr)
		return
	}
	input, aerr := decodeInput(body)
	e.serve(w, r, op, input, aerr)
}

// serveTags serves the three tag operations, whose resource ARN travels in
// the path and whose tag keys travel in the query.
func (e *Emulator) serveTags(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		input := map[string]any{}
		if op == "TagResource" {
			body, aerr := readBody(w, r)
			if aerr == nil {
				input, aerr = decodeInput(body)
			}
			if aerr != nil {
				e.serve(w, r, op, nil, aerr)
				return
			}
		}
		arn, err := url.PathUnescape(r.PathValue("arn"))
		if err != nil {
			e.serve(w, r, op, nil, validationError("resourceArn is not a valid percent-encoded path segment"))
			return
		}
		input["resourceArn"] = arn
		if op == "UntagResource" {
			if keys, ok := r.URL.Query()["tagKeys"]; ok {
				list := make([]any, len(keys))
				for i, k := range keys {
					list[i] = k
				}
				input["tagKeys"] = list
			}
		}
		e.serve(w, r, op, input, nil)
	}
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, validationError("request body is larger than %d bytes", maxRequestBody)
		}
		return nil, newError(errSerialization, "reading request body: %v", err)
	}
	return body, nil
}

func decodeInput(body []byte) (map[string]any, *apiError) {
	input := map[string]any{}
	if len(bytes.TrimSpace(body)) == 0 {
		return input, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&input); err != nil {
		return nil, newError(errSerialization, "request body is not a JSON object: %v", err)
	}
	if dec.More() {
		return nil, newError(errSerialization, "request body has data after the JSON object")
	}
	return input, nil
}

// serve runs one API call through what AWS puts in front of every operation
// (latency, throttling, injected faults, model validation) and writes the
// answer. pre is an error found before the input could be decoded.
func (e *Emulator) serve(w http.ResponseWriter, r *http.Request, op string, input map[string]any, pre *apiError) {
	e.mu.Lock()
	c := e.counter(op)
	c.Calls++
	delay, fault := e.faultFor(op)
	e.mu.Unlock()

	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}

	e.mu.Lock()
	out, aerr := e.run(op, input, pre, fault)
	if aerr != nil {
		c.Errors++
	}
	e.mu.Unlock()

	if aerr != nil {
		e.log.Debug("ivs call failed", "operation", op, "error", aerr.Type, "message", aerr.Message)
		writeError(w, aerr)
		return
	}
	setSecurityHeaders(w.Header())
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		e.log.Warn("writing response", "operation", op, "error", err)
	}
}

// run is serve's part under e.mu.
func (e *Emulator) run(op string, input map[string]any, pre *apiError, fault *Fault) (any, *apiError) {
	if l, ok := e.limiters[op]; ok && !l.Allow() {
		e.counters[op].Throttled++
		return nil, newError(errThrottling, "Rate exceeded for %s", op)
	}
	if fault != nil && fault.ErrorRate > 0 && rand.Float64() < fault.ErrorRate {
		e.counters[op].Faults++
		typ := fault.ErrorType
		if typ == "" {
			typ = errInternal
		}
		return nil, newError(typ, "injected fault for %s", op)
	}
	if pre != nil {
		return nil, pre
	}
	if aerr := validateInput(op, input); aerr != nil {
		return nil, aerr
	}
	body, err := json.Marshal(input)
	if err != nil {
		return nil, newError(errSerialization, "re-encoding input: %v", err)
	}
	return operations[op](e, body)
}

func (e *Emulator) counter(op string) *OpCounter {
	c, ok := e.counters[op]
	if !ok {
		c = &OpCounter{}
		e.counters[op] = c
	}
	return c
}

// faultFor returns the latency to add to op, at most maxLatency, and the
// fault that applies to it: its own, else the "*" one.
func (e *Emulator) faultFor(op string) (time.Duration, *Fault) {
	delay, ok := e.cfg.Latency[op]
	if !ok {
		delay = e.cfg.Latency["*"]
	}
	f, ok := e.faults[op]
	if !ok {
		f, ok = e.faults["*"]
	}
	if !ok {
		return delay, nil
	}
	if f.LatencyMS > 0 {
		delay = min(delay+time.Duration(f.LatencyMS)*time.Millisecond, maxLatency)
	}
	return delay, &f
}

// checkLatency refuses latency that is negative or more than maxLatency.
func checkLatency(d time.Duration) error {
	if d < 0 {
		return errors.New("latency must not be negative")
	}
	if d > maxLatency {
		return fmt.Errorf("latency %v is more than the %v allowed (the server's write timeout must leave room for it)", d, maxLatency)
	}
	return nil
}

// decode unmarshals a validated request body into the operation's input type.
func decode[T any](body []byte) (T, *apiError) {
	var in T
	if err := json.Unmarshal(body, &in); err != nil {
		return in, newError(errSerialization, "decoding request: %v", err)
	}
	return in, nil
}
