package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Delivery perturbs event delivery the way EventBridge may: it delivers at
// least once, late, and in no particular order.
type Delivery struct {
	// DropRate is the share of events never delivered (0 to 1).
	DropRate float64 `json:"dropRate"`
	// DuplicateRate is the share of events delivered twice (0 to 1).
	DuplicateRate float64 `json:"duplicateRate"`
	// DelayMS holds every event back this long.
	DelayMS int `json:"delayMs"`
	// ReorderWindowMS holds each event back a further random time up to this
	// long, so events within the window arrive in any order.
	ReorderWindowMS int `json:"reorderWindowMs"`
	// MaxAttempts is how often a delivery is tried before it is given up
	// (default 5, with exponential back-off).
	MaxAttempts int `json:"maxAttempts"`
}

func (d Delivery) validate() error {
	switch {
	case d.DropRate < 0 || d.DropRate > 1:
		return fmt.Errorf("dropRate %v is not between 0 and 1", d.DropRate)
	case d.DuplicateRate < 0 || d.DuplicateRate > 1:
		return fmt.Errorf("duplicateRate %v is not between 0 and 1", d.DuplicateRate)
	case d.DelayMS < 0 || d.ReorderWindowMS < 0:
		return fmt.Errorf("delayMs and reorderWindowMs must not be negative")
	case d.MaxAttempts < 0:
		return fmt.Errorf("maxAttempts %d must not be negative", d.MaxAttempts)
	}
	return nil
}

// Event is an EventBridge event as IVS sends it.
type Event struct {
	Version    string         `json:"version"`
	ID         string         `json:"id"`
	DetailType string         `json:"detail-type"`
	Source     string         `json:"source"`
	Account    string         `json:"account"`
	Time       string         `json:"time"`
	Region     string         `json:"region"`
	Resources  []string       `json:"resources"`
	Detail     map[string]any `json:"detail"`
}

// emit sends an IVS Stage Update event about participant p of stage s.
func (e *Emulator) emit(s *stage, name string, p *participant, extra map[string]any) {
	sessionID := ""
	if s.active != nil {
		sessionID = s.active.id
	}
	if p.replicationType == replReplica && extra == nil {
		extra = map[string]any{"replica": true}
	}
	e.emitFor(s.arn, sessionID, name, p, extra)
}

func (e *Emulator) emitFor(stageArn, sessionID, name string, p *participant, extra map[string]any) {
	now := e.now().UTC()
	detail := map[string]any{
		"session_id":     sessionID,
		"event_name":     name,
		"event_time":     isoTime(now),
		"user_id":        p.userID,
		"participant_id": p.id,
	}
	for k, v := range extra {
		detail[k] = v
	}
	e.events.publish(Event{
		Version:    "0",
		ID:         uuid.NewString(),
		DetailType: "IVS Stage Update",
		Source:     "aws.ivs",
		Account:    e.cfg.AccountID,
		Time:       now.Format(time.RFC3339),
		Region:     e.cfg.Region,
		Resources:  []string{stageArn},
		Detail:     detail,
	})
}

// eventLogSize bounds the events kept for GET /_emulator/events.
const eventLogSize = 1000

// EventStats counts what happened to emitted events.
type EventStats struct {
	Emitted    int `json:"emitted"`
	Dropped    int `json:"dropped"`
	Duplicated int `json:"duplicated"`
	Delivered  int `json:"delivered"`
	Failed     int `json:"failed"`
}

// eventQueueSize bounds the events waiting for one URL, so that a receiver
// that is down for long costs bounded memory.
const eventQueueSize = 10000

// eventBus delivers events to the configured URLs. Like EventBridge, which
// delivers to each target on its own, every URL has its own queue and
// goroutine: a receiver that is slow or down delays only its own events.
type eventBus struct {
	log    *slog.Logger
	client *http.Client
	ctx    context.Context
	cancel context.CancelFunc
	// running counts the targets' goroutines, which close waits for.
	running sync.WaitGroup

	mu       sync.Mutex
	targets  []*target
	secret   string
	delivery Delivery
	recent   []Event
	stats    EventStats
	// queueLimit is how many events wait for one URL at most; when one more
	// comes, the oldest waiting is given up (eventQueueSize but in tests).
	queueLimit int
	// gen changes on reset, so that events held back before it are dropped
	// and deliveries under way are not counted in the new statistics.
	gen int
}

// target is one events URL and the events, encoded, waiting to be posted to
// it in the order they became due. Its queue is guarded by eventBus.mu.
type target struct {
	url   string
	queue []queuedEvent
	// wake is signalled when the queue gets an event.
	wake chan struct{}
}

type queuedEvent struct {
	name string // the event_name, for logs
	body []byte
}

func newEventBus(urls []string, secret string, d Delivery, log *slog.Logger) *eventBus {
	ctx, cancel := context.WithCancel(context.Background())
	b := &eventBus{
		log:        log,
		client:     &http.Client{Timeout: 5 * time.Second},
		ctx:        ctx,
		cancel:     cancel,
		secret:     secret,
		delivery:   d,
		queueLimit: eventQueueSize,
	}
	for _, url := range urls {
		b.addURL(url)
	}
	return b
}

func (b *eventBus) addURL(url string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Checked under mu, which close holds to cancel, so that no goroutine is
	// added to running once close waits for it.
	if b.ctx.Err() != nil {
		return
	}
	t := &target{url: url, wake: make(chan struct{}, 1)}
	b.targets = append(b.targets, t)
	b.running.Add(1)
	go b.run(t)
}

func (b *eventBus) setDelivery(d Delivery) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.delivery = d
}

func (b *eventBus) snapshot() (Delivery, EventStats, []Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.delivery, b.stats, append([]Event(nil), b.recent...)
}

func (b *eventBus) reset(d Delivery) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.targets {
		t.queue = nil
	}
	b.recent = nil
	b.stats = EventStats{}
	b.delivery = d
	b.gen++
}

// publish never blocks: it is called with the emulator's lock held.
func (b *eventBus) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stats.Emitted++
	b.recent = append(b.recent, ev)
	if len(b.recent) > eventLogSize {
		b.recent = b.recent[len(b.recent)-eventLogSize:]
	}
	d := b.delivery
	if d.DropRate > 0 && rand.Float64() < d.DropRate {
		b.stats.Dropped++
		return
	}
	copies := 1
	if d.DuplicateRate > 0 && rand.Float64() < d.DuplicateRate {
		b.stats.Duplicated++
		copies = 2
	}
	for range copies {
		wait := time.Duration(d.DelayMS) * time.Millisecond
		if d.ReorderWindowMS > 0 {
			wait += time.Duration(rand.IntN(d.ReorderWindowMS)) * time.Millisecond
		}
		if wait == 0 {
			b.enqueueLocked(ev)
			continue
		}
		gen := b.gen
		time.AfterFunc(wait, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.gen == gen {
				b.enqueueLocked(ev)
			}
		})
	}
}

// enqueueLocked queues ev for every URL.
func (b *eventBus) enqueueLocked(ev Event) {
	if b.ctx.Err() != nil || len(b.targets) == 0 {
		return
	}
	body, err := json.Marshal(ev)
	if err != nil {
		b.log.Error("encoding event", "error", err)
		return
	}
	name, _ := ev.Detail["event_name"].(string)
	q := queuedEvent{name: name, body: body}
	for _, t := range b.targets {
		if len(t.queue) >= b.queueLimit {
			t.queue = t.queue[1:]
			b.stats.Failed++
		}
		t.queue = append(t.queue, q)
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// run delivers t's events one at a time, in order, until the bus is closed.
func (b *eventBus) run(t *target) {
	defer b.running.Done()
	for {
		b.mu.Lock()
		var ev queuedEvent
		ok := len(t.queue) > 0
		if ok {
			ev = t.queue[0]
			t.queue = t.queue[1:]
		}
		attempts := b.delivery.MaxAttempts
		gen := b.gen
		b.mu.Unlock()
		if !ok {
			select {
			case <-t.wake:
				continue
			case <-b.ctx.Done():
				return
			}
		}
		err := b.deliver(t.url, ev.body, attempts)
		b.mu.Lock()
		switch {
		case gen != b.gen:
			// Reset while it was on its way: the statistics start afresh.
		case err != nil:
			b.stats.Failed++
		default:
			b.stats.Delivered++
		}
		b.mu.Unlock()
		if err != nil && b.ctx.Err() == nil {
			b.log.Warn("event not delivered", "url", t.url, "event", ev.name, "error", err)
		}
	}
}

// deliver posts one event, retrying with exponential back-off.
func (b *eventBus) deliver(url string, body []byte, attempts int) error {
	if attempts <= 0 {
		attempts = 5
	}
	backoff := 100 * time.Millisecond
	var err error
	for i := range attempts {
		if i > 0 {
			select {
			case <-time.After(backoff):
			case <-b.ctx.Done():
				return b.ctx.Err()
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		if err = b.post(url, body); err == nil {
			return nil
		}
	}
	return err
}

func (b *eventBus) post(url string, body []byte) error {
	req, err := http.NewRequestWithContext(b.ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if b.secret != "" {
		req.Header.Set("x-stagefleet-events-secret", b.secret)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func (b *eventBus) close() {
	b.mu.Lock()
	b.cancel()
	b.mu.Unlock()
	b.running.Wait()
}
