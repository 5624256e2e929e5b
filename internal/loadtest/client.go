package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// client talks to stagefleet's API and to the emulator's control API, both
// on this machine only.
type client struct {
	http *http.Client
	// long is http without its timeout, for a call that may take minutes
	// (ending a broadcast of a million viewers), bounded by its context.
	long *http.Client
	// apis are the API's instances, taken in turn call by call.
	apis []string
	next atomic.Uint64
	// requests counts the calls made of the API.
	requests atomic.Int64
	emu      string
	apiKey   string
	// rateLimited says the API answered 429: before the first viewer, that
	// shows a rate limit the operator may not have named.
	rateLimited atomic.Bool
}

func newClient(apis []string, apiKey string) *client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: loopbackOnly}
	c := &client{
		http: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				// No proxy from the environment: a proxy would carry the
				// load off this machine.
				Proxy:       nil,
				DialContext: dialer.DialContext,
				// Thousands of viewers talk at once; without enough idle
				// connections each request would open (and leave in
				// TIME_WAIT) a connection of its own.
				MaxIdleConns:        1024,
				MaxIdleConnsPerHost: 512,
				IdleConnTimeout:     30 * time.Second,
			},
			// A redirect could point off this machine; neither API redirects.
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("the load test does not follow redirects")
			},
		},
		apis:   apis,
		apiKey: apiKey,
	}
	long := *c.http
	long.Timeout = 0
	c.long = &long
	return c
}

// api is the instance the next call goes to.
func (c *client) api() string {
	return c.apis[(c.next.Add(1)-1)%uint64(len(c.apis))]
}

func (c *client) close() { c.http.CloseIdleConnections() }

// apiResult is one answer of stagefleet's API.
type apiResult struct {
	Status     int
	Code       string // error.code on failure
	Message    string // error.message on failure
	RetryAfter time.Duration
	Elapsed    time.Duration
}

func (r apiResult) String() string {
	if r.Code == "" {
		return strconv.Itoa(r.Status)
	}
	return fmt.Sprintf("%d %s", r.Status, r.Code)
}

// callAPI makes one request to the API and decodes the envelope's data into
// out on success. An error means no answer (or an answer that is not the
// envelope); a failure status is in the result.
func (c *client) callAPI(ctx context.Context, method, path string, body, out any) (apiResult, error) {
	return c.call(ctx, c.http, c.api(), method, path, body, out)
}

// callAPILong is callAPI for a call that may take longer than the usual
// timeout: ctx bounds it.
func (c *client) callAPILong(ctx context.Context, method, path string, body, out any) (apiResult, error) {
	return c.call(ctx, c.long, c.api(), method, path, body, out)
}

// callInstance is callAPI to one instance named by its base URL.
func (c *client) callInstance(ctx context.Context, base, method, path string, body, out any) (apiResult, error) {
	return c.call(ctx, c.http, base, method, path, body, out)
}

func (c *client) call(ctx context.Context, hc *http.Client, base, method, path string, body, out any) (apiResult, error) {
	hdr := http.Header{}
	if c.apiKey != "" {
		hdr.Set("x-api-key", c.apiKey)
	}
	start := time.Now()
	c.requests.Add(1)
	resp, raw, err := c.do(ctx, hc, method, base+path, body, hdr)
	if err != nil {
		return apiResult{}, err
	}
	res := apiResult{Status: resp.StatusCode, Elapsed: time.Since(start)}
	if res.Status == http.StatusTooManyRequests {
		c.rateLimited.Store(true)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		res.RetryAfter = time.Duration(s) * time.Second
	}
	var env struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
		Error   *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return res, fmt.Errorf("%s %s: %d, not the API's JSON envelope: %.200s", method, path, resp.StatusCode, raw)
	}
	if env.Error != nil {
		res.Code, res.Message = env.Error.Code, env.Error.Message
	}
	if env.Success && out != nil {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return res, fmt.Errorf("%s %s: decoding data: %w", method, path, err)
		}
	}
	return res, nil
}

// emuResult is one answer of the emulator's control API.
type emuResult struct {
	Status int
	// Type is the IVS error name (x-amzn-ErrorType) on failure.
	Type    string
	Message string
}

func (r emuResult) String() string { return fmt.Sprintf("%d %s", r.Status, r.Type) }

// callEmulator makes one request to the emulator and decodes a 200's body
// into out.
func (c *client) callEmulator(ctx context.Context, method, path string, body, out any) (emuResult, error) {
	resp, raw, err := c.do(ctx, c.http, method, c.emu+path, body, nil)
	if err != nil {
		return emuResult{}, err
	}
	res := emuResult{Status: resp.StatusCode, Type: resp.Header.Get("x-amzn-ErrorType")}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(raw, &e) // the status and type say enough without it
		res.Message = e.Message
		return res, nil
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return res, fmt.Errorf("%s %s: decoding: %w", method, path, err)
		}
	}
	return res, nil
}

func (c *client) do(ctx context.Context, hc *http.Client, method, url string, body any, hdr http.Header) (*http.Response, []byte, error) {
	var rb io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, err
		}
		rb = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rb)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: reading the answer: %w", method, url, err)
	}
	return resp, raw, nil
}
