package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/testproc"
)

// syncBuffer is a bytes.Buffer that the emulator's log may write to from
// several goroutines while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freeAddr returns a loopback address nothing listens on. The emulator
// command does not report the port it bound, so the test picks one first.
func freeAddr(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
}

func TestEmulatorCommand(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"emulator", "--addr", addr}, &stdout, &stderr) }()

	// Poll until the emulator answers an IVS call; an empty account lists
	// no stages, as an empty array (SDKs expect a list, not null).
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, status, err := post(client, "http://"+addr+"/ListStages", "{}")
		if err == nil && status == http.StatusOK {
			if got := strings.TrimSpace(body); got != `{"stages":[]}` {
				t.Fatalf("ListStages = %s, want {\"stages\":[]}", got)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("emulator command returned before serving: %v\nstderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("emulator did not answer ListStages within 10s (last: status %d, %v)\nstderr:\n%s", status, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Cancelling the context is what SIGINT and SIGTERM do: the server must
	// shut down gracefully and the command return no error.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("emulator command returned %v after cancel, want nil\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("emulator command did not return within 10s of cancel")
	}
	if !strings.Contains(stderr.String(), "emulator listening") {
		t.Errorf("stderr does not log the listening address:\n%s", stderr.String())
	}
}

func post(client *http.Client, url, body string) (string, int, error) {
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

func TestVersionCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &stdout, &stderr); err != nil {
		t.Fatalf("version: %v", err)
	}
	if !strings.HasPrefix(stdout.String(), "stagefleet ") {
		t.Errorf("version printed %q, want it to start with \"stagefleet \"", stdout.String())
	}
}

func TestCommandErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		mention string // the error must name this
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, "frobnicate"},
		{"unknown quota operation", []string{"emulator", "--quota", "Nope=1"}, "Nope"},
		{"stray argument", []string{"emulator", "extra"}, "extra"},
		{"all interfaces", []string{"emulator", "--addr", "0.0.0.0:4566"}, "--allow-remote"},
		{"empty host", []string{"emulator", "--addr", ":4566"}, "not a loopback address"},
		{"remote host", []string{"emulator", "--addr", "example.com:4566"}, "accepts any credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A context already cancelled: should a case wrongly start the
			// emulator, it shuts down at once instead of hanging the test.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var stdout, stderr bytes.Buffer
			err := run(ctx, tt.args, &stdout, &stderr)
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error", tt.args)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("run(%q) = %q, want it to name %q", tt.args, err, tt.mention)
			}
		})
	}
}

func TestEmulatorAllowRemote(t *testing.T) {
	// Cancelled at once: the command must get past the address check and
	// shut down without serving.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"emulator", "--allow-remote", "--addr", ":0"}, &stdout, &stderr); err != nil {
		t.Fatalf("emulator --allow-remote --addr :0 = %v, want nil", err)
	}
	if !strings.Contains(stderr.String(), "listening beyond loopback") {
		t.Errorf("stderr does not warn that the emulator is reachable from other machines:\n%s", stderr.String())
	}
}

// TestLoggerDurations: no log line carries a raw time.Duration (integer
// nanoseconds); each is milliseconds under a key that says so.
func TestLoggerDurations(t *testing.T) {
	tests := []struct {
		name    string
		attr    slog.Attr
		group   string // the attribute is logged inside this group, if set
		wantKey string
		want    any
	}{
		{"bare key gets the suffix", slog.Duration("timeout", 10*time.Second), "", "timeout_ms", 10000.0},
		{"key that says ms kept", slog.Duration("wait_ms", 1500*time.Microsecond), "", "wait_ms", 1.5},
		{"sub-millisecond kept", slog.Duration("took", 250*time.Microsecond), "", "took_ms", 0.25},
		{"inside a group", slog.Duration("interval", time.Minute), "reconcile", "interval_ms", 60000.0},
		{"not a duration untouched", slog.Int("timeout", 10), "", "timeout", 10.0},
		{"string untouched", slog.String("timeout", "10s"), "", "timeout", "10s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := newLogger(&buf, "info")
			if err != nil {
				t.Fatal(err)
			}
			if tt.group != "" {
				log = log.WithGroup(tt.group)
			}
			log.LogAttrs(context.Background(), slog.LevelInfo, "m", tt.attr)
			var line map[string]any
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			fields := line
			if tt.group != "" {
				fields, _ = line[tt.group].(map[string]any)
			}
			if got, ok := fields[tt.wantKey]; !ok || got != tt.want {
				t.Errorf("logged %s, want %q: %v", strings.TrimSpace(buf.String()), tt.wantKey, tt.want)
			}
			if tt.wantKey != tt.attr.Key {
				if _, ok := fields[tt.attr.Key]; ok {
					t.Errorf("logged %s, still with key %q", strings.TrimSpace(buf.String()), tt.attr.Key)
				}
			}
		})
	}
}
