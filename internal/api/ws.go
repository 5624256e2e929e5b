package api

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"github.com/stagefleet/stagefleet/internal/live"
)

// Live is the WebSocket hub behind GET /ws.
type Live interface {
	// Serve upgrades r and serves the connection until it ends. It returns
	// live.ErrFull, having written nothing, when it holds all the
	// connections it may.
	Serve(w http.ResponseWriter, r *http.Request) error
}

// keyProtocol is the prefix of the subprotocol that carries the API key:
// stagefleet.key.<base64url(key)>.
const keyProtocol = live.Subprotocol + ".key."

// ws serves GET /ws. What comes before the upgrade is answered in the
// envelope: a missing or wrong key (401), a request that is no WebSocket
// handshake (426), too many connections (503). Browsers cannot set headers
// on a WebSocket, so the key may also come as the apiKey query parameter or
// as a subprotocol.
func (s *server) ws(w http.ResponseWriter, r *http.Request) *apiError {
	if !s.opts.SkipAuth {
		got, ok := wsKey(r)
		switch {
		case !ok:
			return &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized,
				message: "missing API key: send x-api-key, the apiKey query parameter, or the subprotocol " + keyProtocol + "<base64url(key)> beside " + live.Subprotocol}
		case !secretEqual(got, s.opts.APISecretKey):
			return &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized, message: "invalid API key"}
		}
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Upgrade", "websocket")
		return &apiError{status: http.StatusUpgradeRequired, code: CodeUpgradeRequired,
			message: "GET /ws is a WebSocket: open it with a WebSocket client (Connection: Upgrade, Upgrade: websocket)"}
	}
	if s.opts.Live == nil {
		return &apiError{status: http.StatusNotFound, code: CodeNotFound, message: "no route GET /ws: this server has no live updates"}
	}
	if err := s.opts.Live.Serve(w, r); errors.Is(err, live.ErrFull) {
		return &apiError{status: http.StatusServiceUnavailable, code: CodeTooManyConnections,
			message: "this instance holds all the WebSocket connections it may (WS_MAX_CLIENTS); try again later or another instance"}
	}
	return nil
}

// wsKey is the key the client sent: x-api-key, else the apiKey query
// parameter, else the key subprotocol.
func wsKey(r *http.Request) (string, bool) {
	if k := r.Header.Get("x-api-key"); k != "" {
		return k, true
	}
	if k := r.URL.Query().Get("apiKey"); k != "" {
		return k, true
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if enc, ok := strings.CutPrefix(strings.TrimSpace(p), keyProtocol); ok {
				// A subprotocol is a token, which cannot hold '=': the
				// encoding is unpadded.
				k, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(enc, "="))
				if err != nil {
					return "", true // sent, and wrong
				}
				return string(k), true
			}
		}
	}
	return "", false
}

// headerHasToken says whether a comma-separated header holds token, in any
// case (Connection: keep-alive, Upgrade).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
