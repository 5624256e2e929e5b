package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// cloudWatchUnits are the units the embedded metric format takes (those of
// CloudWatch's MetricDatum).
var cloudWatchUnits = []string{"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
	"Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
	"Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second",
	"Count/Second", "None"}

// checkEMF checks one log line against the embedded metric format's rules,
// and returns its root members.
func checkEMF(t *testing.T, line string, now time.Time) map[string]any {
	t.Helper()
	// The whole line is one JSON object: nothing before or after it.
	var root map[string]any
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&root); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, line)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on the line: %s", line)
	}
	aws, ok := root["_aws"].(map[string]any)
	if !ok {
		t.Fatalf("no _aws object: %s", line)
	}
	// _aws holds exactly Timestamp and CloudWatchMetrics.
	if keys := sortedKeys(aws); !slices.Equal(keys, []string{"CloudWatchMetrics", "Timestamp"}) {
		t.Errorf("_aws members %v, want CloudWatchMetrics and Timestamp", keys)
	}
	ts, err := aws["Timestamp"].(json.Number).Int64()
	if err != nil || ts != now.UnixMilli() {
		t.Errorf("Timestamp %v, want %d (milliseconds since the epoch)", aws["Timestamp"], now.UnixMilli())
	}
	directives, ok := aws["CloudWatchMetrics"].([]any)
	if !ok || len(directives) == 0 {
		t.Fatalf("CloudWatchMetrics is not a non-empty array: %v", aws["CloudWatchMetrics"])
	}
	for _, d := range directives {
		d, ok := d.(map[string]any)
		if !ok {
			t.Fatalf("a metric directive is not an object: %v", d)
		}
		if keys := sortedKeys(d); !slices.Equal(keys, []string{"Dimensions", "Metrics", "Namespace"}) {
			t.Errorf("metric directive members %v, want Dimensions, Metrics and Namespace", keys)
		}
		if ns, _ := d["Namespace"].(string); ns == "" || len(ns) > 255 {
			t.Errorf("Namespace %v, want a string of 1 to 255 characters", d["Namespace"])
		}
		sets, ok := d["Dimensions"].([]any)
		if !ok {
			t.Fatalf("Dimensions is not an array: %v", d["Dimensions"])
		}
		for _, set := range sets {
			set, ok := set.([]any)
			if !ok || len(set) > 30 {
				t.Fatalf("a dimension set is not an array of at most 30 names: %v", set)
			}
			for _, name := range set {
				name, _ := name.(string)
				// Each dimension is a member of the root with a string value.
				if _, ok := root[name].(string); !ok {
					t.Errorf("dimension %q has no string member at the root", name)
				}
			}
		}
		metrics, ok := d["Metrics"].([]any)
		if !ok || len(metrics) == 0 || len(metrics) > 100 {
			t.Fatalf("Metrics is not an array of 1 to 100 definitions: %v", d["Metrics"])
		}
		for _, md := range metrics {
			md, ok := md.(map[string]any)
			if !ok {
				t.Fatalf("a metric definition is not an object: %v", md)
			}
			name, _ := md["Name"].(string)
			if name == "" || len(name) > 1024 {
				t.Errorf("metric Name %v, want a string of 1 to 1024 characters", md["Name"])
			}
			if unit, ok := md["Unit"].(string); !ok || !slices.Contains(cloudWatchUnits, unit) {
				t.Errorf("metric %s Unit %v, want a CloudWatch unit", name, md["Unit"])
			}
			// Each metric is a member of the root with a number value.
			if _, ok := root[name].(json.Number); !ok {
				t.Errorf("metric %q has no number member at the root: %v", name, root[name])
			}
		}
	}
	return root
}

func sortedKeys(m map[string]any) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestEMFLine(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 123e6, time.UTC)
	line, err := emfLine(CloudWatch{Namespace: "IVS/Production", Environment: "production"}, now, 62, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one line: %q", line)
	}
	root := checkEMF(t, string(line), now)
	want := map[string]string{"Environment": "production", "Service": "stagefleet", "TotalViewers": "62", "ActiveStages": "2"}
	for k, v := range want {
		if got := fmt.Sprint(root[k]); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}
	d := root["_aws"].(map[string]any)["CloudWatchMetrics"].([]any)[0].(map[string]any)
	if d["Namespace"] != "IVS/Production" {
		t.Errorf("Namespace = %v, want IVS/Production", d["Namespace"])
	}
	if got := fmt.Sprint(d["Dimensions"]); got != "[[Environment Service]]" {
		t.Errorf("Dimensions = %s, want [[Environment Service]]", got)
	}
}

// syncBuffer is a buffer written by RunCloudWatch and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunCloudWatchWritesTheStore(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	now := time.Now()
	for i, b := range []string{"a", "b"} {
		arn := fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/Origin%d", i)
		if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: b, OriginArn: arn, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutStage(ctx, store.Stage{Arn: arn, BroadcastID: b, Role: store.RoleOrigin, Capacity: 10, Seatable: true, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: b, UserID: "u", ParticipantID: "p", Now: now, TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	m := New(Options{})
	m.ObserveState(st, func() map[string]int { return nil })
	var out syncBuffer
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.RunCloudWatch(runCtx, &out, CloudWatch{Namespace: "IVS/Test", Environment: "test", Interval: 20 * time.Millisecond})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("%d lines in 5 s at a 20 ms interval: %q", len(lines), out.String())
	}
	for _, line := range lines {
		var doc struct {
			AWS struct{ Timestamp int64 } `json:"_aws"`
		}
		if err := json.Unmarshal([]byte(line), &doc); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		root := checkEMF(t, line, time.UnixMilli(doc.AWS.Timestamp))
		if fmt.Sprint(root["TotalViewers"]) != "2" || fmt.Sprint(root["ActiveStages"]) != "2" {
			t.Errorf("TotalViewers %v, ActiveStages %v, want 2 and 2: %s", root["TotalViewers"], root["ActiveStages"], line)
		}
		if ts := time.UnixMilli(doc.AWS.Timestamp); ts.Before(now.Add(-time.Second)) || ts.After(time.Now()) {
			t.Errorf("Timestamp %v is not the time of the line", ts)
		}
	}
}
