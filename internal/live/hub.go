// Package live serves GET /ws: a WebSocket hub that pushes what the fleet's
// views show as it changes. The stats channel and its messages are the
// previous server's; the broadcasts and broadcast:<id> channels are
// stagefleet's own. The hub reads the store every instance shares, so a
// client of any instance sees the whole fleet.
package live

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// ErrFull is Serve's answer when the hub holds Options.MaxClients
// connections: nothing was written, so the caller can answer 503.
var ErrFull = errors.New("too many WebSocket connections")

// Subprotocol is the protocol's name. A browser, which cannot set headers
// on a WebSocket, offers it beside its key's (stagefleet.key.<base64url
// key>): a server that offers are made to must answer one of them, and the
// key's is never echoed.
const Subprotocol = "stagefleet"

const (
	// readLimit bounds a client's message: the largest it needs to send is
	// a subscribe with a 64-character broadcast id.
	readLimit = 4 << 10
	// maxSubscriptions bounds the channels of one connection, and so the
	// reads one client makes the hub do each poll.
	maxSubscriptions = 32
	// readTimeout bounds one poll's reads of the store.
	readTimeout = 5 * time.Second
)

// Fleet is what the hub reads: the views GET /api/stats reads.
type Fleet interface {
	Broadcasts(ctx context.Context) ([]store.Broadcast, error)
	Stages(ctx context.Context, broadcastID string) ([]fleet.StageView, error)
	Hosts(ctx context.Context, broadcastID string) ([]store.Host, error)
}

// Options configure a Hub; zero values take the defaults.
type Options struct {
	// MaxClients bounds the connections open at once (WS_MAX_CLIENTS,
	// 1000).
	MaxClients int
	// StatsInterval is how often the stats channel is pushed
	// (WS_STATS_INTERVAL, 5s as the previous server).
	StatsInterval time.Duration
	// PollInterval is how often the views of the channels with subscribers
	// are read and compared with what was last pushed (250ms): a change
	// reaches clients within one interval and a read.
	PollInterval time.Duration
	// SendBuffer bounds the messages waiting for one connection (64, so
	// that one poll's events of a large broadcast fit); a client that lets
	// more pile up is dropped.
	SendBuffer int
	// WriteTimeout bounds the write of one message (2s); a client that
	// takes longer is dropped.
	WriteTimeout time.Duration
	// Origins may open a connection from a browser page besides the
	// server's own host (CORS_ORIGINS); "*" is any.
	Origins []string
	Logger  *slog.Logger
}

// Hub holds the connections and pushes each channel's changes to its
// subscribers. Run polls the fleet; Serve serves one connection.
type Hub struct {
	fleet  Fleet
	opts   Options
	log    *slog.Logger
	accept *websocket.AcceptOptions
	// failing is whether the last read of the fleet failed, so that a
	// store that is down is logged once, not every poll (Run's only).
	failing bool

	mu     sync.Mutex
	closed bool
	// open counts the connections admitted, upgraded or not yet.
	open     int
	clients  map[*client]struct{}
	channels map[string]*channel
	// conns waits for the connections registered in clients.
	conns sync.WaitGroup
}

// channel is one channel's subscribers and what it last pushed.
type channel struct {
	// subs maps each subscriber to whether it has had the channel's state.
	subs map[*client]bool
	// data is the last data pushed, encoded; nil before the first read.
	data []byte
	// state is a broadcast:<id> channel's last state, for the events.
	state broadcastState
}

// client is one connection.
type client struct {
	conn *websocket.Conn
	send chan []byte
	// stop asks the writer to close the connection with code and reason.
	stop     chan struct{}
	stopOnce sync.Once
	code     websocket.StatusCode
	reason   string
	// subs are the client's channels (guarded by Hub.mu).
	subs map[string]bool
}

// close asks the writer to close the connection; the first call's code
// and reason win, and only it returns true.
func (c *client) close(code websocket.StatusCode, reason string) (first bool) {
	c.stopOnce.Do(func() {
		c.code, c.reason = code, reason
		close(c.stop)
		first = true
	})
	return first
}

// New returns a hub reading f.
func New(f Fleet, opts Options) *Hub {
	opts.MaxClients = cmp.Or(opts.MaxClients, 1000)
	opts.StatsInterval = cmp.Or(opts.StatsInterval, 5*time.Second)
	opts.PollInterval = cmp.Or(opts.PollInterval, 250*time.Millisecond)
	opts.SendBuffer = cmp.Or(opts.SendBuffer, 64)
	opts.WriteTimeout = cmp.Or(opts.WriteTimeout, 2*time.Second)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Hub{
		fleet: f,
		opts:  opts,
		log:   opts.Logger,
		accept: &websocket.AcceptOptions{
			Subprotocols: []string{Subprotocol},
			// The library takes the server's own host, and these
			// (scheme://host patterns, as CORS_ORIGINS holds them).
			OriginPatterns:     opts.Origins,
			InsecureSkipVerify: slices.Contains(opts.Origins, "*"),
		},
		clients:  map[*client]struct{}{},
		channels: map[string]*channel{},
	}
}

// Serve upgrades r and serves the connection until it ends. When the hub
// holds MaxClients connections it returns ErrFull having written nothing;
// every other failure is answered by the upgrade itself (a malformed
// handshake, an origin not allowed).
func (h *Hub) Serve(w http.ResponseWriter, r *http.Request) error {
	h.mu.Lock()
	if h.open >= h.opts.MaxClients {
		h.mu.Unlock()
		return ErrFull
	}
	h.open++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.open--
		h.mu.Unlock()
	}()

	conn, err := websocket.Accept(w, r, h.accept)
	if err != nil {
		h.log.Debug("websocket upgrade refused", "error", err)
		return nil
	}
	conn.SetReadLimit(readLimit)
	c := &client{conn: conn, send: make(chan []byte, h.opts.SendBuffer), stop: make(chan struct{}), subs: map[string]bool{}}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		_ = conn.Close(websocket.StatusGoingAway, "server shutting down")
		return nil
	}
	h.clients[c] = struct{}{}
	h.conns.Add(1)
	h.mu.Unlock()
	defer h.conns.Done()

	writer := make(chan struct{})
	go func() {
		defer close(writer)
		h.write(c)
	}()
	h.read(c)
	h.unregister(c)
	// The connection is closed already; this ends the writer.
	c.close(websocket.StatusNormalClosure, "")
	<-writer
	return nil
}

// Close closes every connection with 1001 (going away) and refuses new
// ones, then waits for them to end, or for ctx: hijacked connections are
// neither closed nor waited for by the HTTP server's shutdown.
func (h *Hub) Close(ctx context.Context) {
	h.mu.Lock()
	h.closed = true
	for c := range h.clients {
		c.close(websocket.StatusGoingAway, "server shutting down")
	}
	h.mu.Unlock()
	done := make(chan struct{})
	go func() {
		h.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		h.log.Warn("websocket connections still closing at shutdown's end")
	}
}

// write sends the client's messages, one write at a time, until it is
// asked to close the connection or a write fails.
func (h *Hub) write(c *client) {
	for {
		select {
		case <-c.stop:
			// Bounded by the library: 5s to write the close frame and 5s
			// for the client's.
			_ = c.conn.Close(c.code, c.reason)
			return
		case msg := <-c.send:
			ctx, cancel := context.WithTimeout(context.Background(), h.opts.WriteTimeout)
			err := c.conn.Write(ctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				// A write that timed out has closed the connection: a
				// client that reads nothing would not read a close frame
				// either.
				h.log.Debug("websocket client dropped", "reason", "write failed", "error", err)
				_ = c.conn.CloseNow()
				return
			}
		}
	}
}

// read answers the client's messages until the connection ends.
func (h *Hub) read(c *client) {
	for {
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			return
		}
		var m clientMessage
		if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil {
			h.fail(c, `messages are JSON text, such as {"type":"subscribe","channel":"stats"}`)
			continue
		}
		switch m.Type {
		case "ping":
			h.reply(c, reply{Type: "pong"})
		case "subscribe":
			h.subscribe(c, m.Channel)
		case "unsubscribe":
			h.unsubscribe(c, m.Channel)
		default:
			h.fail(c, fmt.Sprintf("unknown message type %q: send subscribe, unsubscribe or ping", m.Type))
		}
	}
}

func (h *Hub) reply(c *client, r reply) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.enqueue(c, encode(r))
}

// fail tells the client what was wrong with its message; the connection
// stays open.
func (h *Hub) fail(c *client, message string) {
	h.reply(c, reply{Type: "error", Message: message})
}

// enqueue queues msg for c, or drops c when its queue is full: a client
// that does not keep up is never waited for. Called with h.mu held, so
// that a channel's messages keep their order.
func (h *Hub) enqueue(c *client, msg []byte) {
	select {
	case c.send <- msg:
	default:
		if c.close(websocket.StatusTryAgainLater, "too slow: messages were not read") {
			h.log.Debug("websocket client dropped", "reason", "send buffer full")
		}
	}
}

func (h *Hub) subscribe(c *client, name string) {
	if err := checkChannel(name); err != nil {
		h.fail(c, err.Error())
		return
	}
	h.mu.Lock()
	if !c.subs[name] && len(c.subs) >= maxSubscriptions {
		h.mu.Unlock()
		h.fail(c, fmt.Sprintf("at most %d channels per connection: unsubscribe from one first", maxSubscriptions))
		return
	}
	c.subs[name] = true
	ch := h.channels[name]
	if ch == nil {
		ch = &channel{subs: map[*client]bool{}}
		h.channels[name] = ch
	}
	// A subscriber gets the channel's state at the next poll, changed or
	// not, after its subscribed, which is queued first. Polls keep their
	// pace whatever clients do: subscribing never makes the hub read more
	// often.
	ch.subs[c] = false
	h.enqueue(c, encode(reply{Type: "subscribed", Channel: name, Timestamp: timestamp(time.Now())}))
	h.mu.Unlock()
}

func (h *Hub) unsubscribe(c *client, name string) {
	if err := checkChannel(name); err != nil {
		h.fail(c, err.Error())
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leave(c, name)
	h.enqueue(c, encode(reply{Type: "unsubscribed", Channel: name, Timestamp: timestamp(time.Now())}))
}

// leave removes c from a channel, and a channel nobody follows from the
// polls. Called with h.mu held.
func (h *Hub) leave(c *client, name string) {
	delete(c.subs, name)
	if ch := h.channels[name]; ch != nil {
		delete(ch.subs, c)
		if len(ch.subs) == 0 {
			delete(h.channels, name)
		}
	}
}

func (h *Hub) unregister(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range c.subs {
		h.leave(c, name)
	}
	delete(h.clients, c)
}

// Run polls the fleet for the channels with subscribers until ctx ends.
func (h *Hub) Run(ctx context.Context) {
	poll := time.NewTicker(h.opts.PollInterval)
	defer poll.Stop()
	stats := time.NewTicker(h.opts.StatsInterval)
	defer stats.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stats.C:
			h.pushStats(ctx)
		case <-poll.C:
			h.poll(ctx)
		}
	}
}

// watched lists the channels with subscribers that are pushed on change.
func (h *Hub) watched() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var names []string
	for name := range h.channels {
		if name != chanStats {
			names = append(names, name)
		}
	}
	return names
}

// poll reads the watched channels' views and pushes what changed.
func (h *Hub) poll(ctx context.Context) {
	names := h.watched()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	r := reads{fleet: h.fleet, ctx: ctx, byID: map[string]broadcastState{}}
	for _, name := range names {
		if name == chanBroadcasts {
			all, err := r.all()
			if err != nil {
				h.readFailed(err)
				return
			}
			h.publish(name, "broadcasts_update", summarize(all), nil)
			continue
		}
		st, err := r.one(strings.TrimPrefix(name, chanBroadcast))
		if err != nil {
			h.readFailed(err)
			return
		}
		h.publish(name, "broadcast_update", st, &st)
	}
	h.readOK()
}

// publish pushes data on the named channel: to every subscriber when it
// differs from what was pushed last, with the events of the change (cur,
// for a broadcast:<id> channel), and to new subscribers in any case.
func (h *Hub) publish(name, typ string, data any, cur *broadcastState) {
	raw := encode(data)
	now := timestamp(time.Now())
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.channels[name]
	if ch == nil {
		return // everyone left while it was read
	}
	changed := string(raw) != string(ch.data)
	msgs := [][]byte{encode(push{Type: typ, Channel: name, Timestamp: now, Data: json.RawMessage(raw)})}
	if changed && ch.data != nil && cur != nil {
		for _, ev := range changes(ch.state, *cur) {
			msgs = append(msgs, encode(push{Type: "fleet_event", Channel: name, Timestamp: now, Data: ev}))
		}
	}
	for c, had := range ch.subs {
		switch {
		case !had:
			// Its first state: the events are changes from a state it
			// never had.
			h.enqueue(c, msgs[0])
			ch.subs[c] = true
		case changed:
			for _, m := range msgs {
				h.enqueue(c, m)
			}
		}
	}
	ch.data = raw
	if cur != nil {
		ch.state = *cur
	}
}

// pushStats sends the previous server's stats_update to the stats
// channel, changed or not.
func (h *Hub) pushStats(ctx context.Context) {
	h.mu.Lock()
	_, watched := h.channels[chanStats]
	h.mu.Unlock()
	if !watched {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	r := reads{fleet: h.fleet, ctx: ctx, byID: map[string]broadcastState{}}
	all, err := r.all()
	if err != nil {
		h.readFailed(err)
		return
	}
	h.readOK()
	msg := encode(statsUpdate{Type: "stats_update", Data: stats(all, time.Now())})
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.channels[chanStats]; ch != nil {
		for c := range ch.subs {
			h.enqueue(c, msg)
		}
	}
}

func (h *Hub) readFailed(err error) {
	if !h.failing {
		h.log.Warn("live updates: reading the fleet failed; clients get no update until it answers", "error", err)
	}
	h.failing = true
}

func (h *Hub) readOK() {
	if h.failing {
		h.log.Info("live updates: reading the fleet works again")
	}
	h.failing = false
}

// reads reads each broadcast at most once a poll, whichever channels show
// it.
type reads struct {
	fleet Fleet
	ctx   context.Context
	byID  map[string]broadcastState
}

func (r *reads) one(id string) (broadcastState, error) {
	if st, ok := r.byID[id]; ok {
		return st, nil
	}
	stages, err := r.fleet.Stages(r.ctx, id)
	if err != nil {
		return broadcastState{}, err
	}
	hosts, err := r.fleet.Hosts(r.ctx, id)
	if err != nil {
		return broadcastState{}, err
	}
	st := newBroadcastState(id, stages, hosts)
	r.byID[id] = st
	return st, nil
}

func (r *reads) all() ([]broadcastState, error) {
	bs, err := r.fleet.Broadcasts(r.ctx)
	if err != nil {
		return nil, err
	}
	out := make([]broadcastState, 0, len(bs))
	for _, b := range bs {
		st, err := r.one(b.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}
