package emulator

import (
	"crypto/ecdsa"
	"encoding/base64"
	"math/rand/v2"
	"strconv"
	"time"
)

// state is the emulated account: everything under Emulator.mu.
type state struct {
	seq          int64 // orders resources by creation, for stable pagination
	stages       map[string]*stage
	keys         map[string]*publicKey
	replications []*replication
	// gen changes on reset so that timers armed before it do nothing.
	gen    int
	timers map[*time.Timer]struct{}
}

func newState() *state {
	return &state{
		stages: map[string]*stage{},
		keys:   map[string]*publicKey{},
		timers: map[*time.Timer]struct{}{},
	}
}

func (s *state) next() int64 {
	s.seq++
	return s.seq
}

func (s *state) stopTimers() {
	for t := range s.timers {
		t.Stop()
	}
	clear(s.timers)
	s.gen++
}

type stage struct {
	seq      int64
	arn      string
	id       string
	name     string
	tags     map[string]string
	recCfg   map[string]any // autoParticipantRecordingConfiguration, echoed back
	sessions []*session     // oldest first
	active   *session
	// revoked holds participants removed by DisconnectParticipant: their
	// tokens can no longer join.
	revoked        map[string]bool
	maxSubscribers int
}

type session struct {
	seq          int64
	id           string
	start        time.Time
	end          time.Time // zero while the session is active
	participants []*participant
}

func (s *session) participant(id string) *participant {
	for _, p := range s.participants {
		if p.id == id {
			return p
		}
	}
	return nil
}

const (
	stateConnected    = "CONNECTED"
	stateDisconnected = "DISCONNECTED"

	replNone    = "NONE"
	replSource  = "SOURCE"
	replReplica = "REPLICA"

	replActive  = "ACTIVE"
	replStopped = "STOPPED"
)

type participant struct {
	seq        int64
	id         string
	userID     string
	attributes map[string]string
	state      string
	firstJoin  time.Time
	// publishing is whether media flows now; everPublished is what the API's
	// "published" field reports.
	publishing    bool
	everPublished bool
	canPublish    bool
	canSubscribe  bool

	replicationType  string
	replicationState string
	sourceStageArn   string
	sourceSessionID  string
}

func (p *participant) connected() bool { return p.state == stateConnected }

// counts returns the connected subscribers and publishers of a session.
func (s *session) counts() (subscribers, publishers int) {
	for _, p := range s.participants {
		switch {
		case !p.connected():
		case p.publishing:
			publishers++
		default:
			subscribers++
		}
	}
	return subscribers, publishers
}

type publicKey struct {
	seq         int64
	arn         string
	name        string
	material    string
	fingerprint string
	tags        map[string]string
	key         *ecdsa.PublicKey
}

// replication is one participant copied from a source stage into a
// destination stage. A record stays, STOPPED, after it ends.
type replication struct {
	seq            int64
	participantID  string
	sourceArn      string
	destArn        string
	sourceSession  string
	destSession    string
	state          string // starting (internal), ACTIVE, STOPPED
	reconnectAfter time.Duration
	attributes     map[string]string
	// windowEpoch changes whenever the source stops or resumes publishing,
	// so that a reconnect-window timer armed before that does nothing.
	windowEpoch int
}

const replStarting = "STARTING"

const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// randomID returns n characters that fit every IVS id pattern.
func randomID(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = idAlphabet[rand.IntN(len(idAlphabet))]
	}
	return string(b)
}

// newSessionID returns an id of the model's fixed length 16: "st-" and 13.
func newSessionID() string { return "st-" + randomID(13) }

// pageToken and parsePageToken make nextToken values: the creation sequence
// of the last item returned, so pages stay stable while items come and go.
func pageToken(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("seq:" + strconv.FormatInt(seq, 10)))
}

func parsePageToken(tok string) (int64, *apiError) {
	if tok == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil && len(raw) > 4 && string(raw[:4]) == "seq:" {
		if n, err := strconv.ParseInt(string(raw[4:]), 10, 64); err == nil && n >= 0 {
			return n, nil
		}
	}
	return 0, validationError("nextToken %q is not a token this API returned", tok)
}

// page returns the items after token, at most limit (default 50), and the
// token of the next page if there is one. items must be in creation order.
func page[T any](items []T, seqOf func(T) int64, token string, limit *int) ([]T, *string, *apiError) {
	after, aerr := parsePageToken(token)
	if aerr != nil {
		return nil, nil, aerr
	}
	n := 50
	if limit != nil {
		n = *limit
	}
	out := make([]T, 0, min(n, len(items)))
	for _, it := range items {
		if seqOf(it) <= after {
			continue
		}
		if len(out) == n {
			next := pageToken(seqOf(out[len(out)-1]))
			return out, &next, nil
		}
		out = append(out, it)
	}
	return out, nil, nil
}

// afterFunc arms a timer that runs f under e.mu, unless the state was reset
// in between.
func (e *Emulator) afterFunc(d time.Duration, f func()) {
	gen := e.st.gen
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(e.st.timers, t)
		if e.st.gen != gen {
			return
		}
		f()
	})
	e.st.timers[t] = struct{}{}
}

func isoTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}
