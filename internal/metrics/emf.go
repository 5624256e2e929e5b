package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// CloudWatch options: what the previous server's ENABLE_MONITORING wrote.
type CloudWatch struct {
	// Namespace of the metrics (CLOUDWATCH_NAMESPACE).
	Namespace string
	// Environment is the Environment dimension's value (NODE_ENV).
	Environment string
	// Interval between lines (METRICS_INTERVAL).
	Interval time.Duration
}

// ServiceName is the Service dimension's value.
const ServiceName = "stagefleet"

// RunCloudWatch writes, every o.Interval until ctx ends, one line in
// CloudWatch's embedded metric format to w (stdout, which the CloudWatch
// agent, Lambda or ECS's awslogs driver ship to CloudWatch Logs, where the
// metrics are extracted): TotalViewers (seats of every broadcast) and
// ActiveStages (stages of every broadcast), both Count, in o.Namespace
// with the dimensions Environment and Service. It needs ObserveState; a
// reading that fails is logged and its line skipped.
func (m *Metrics) RunCloudWatch(ctx context.Context, w io.Writer, o CloudWatch) {
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := m.writeEMF(ctx, w, o, now); err != nil {
				m.log.Warn("cloudwatch metrics", "error", err)
			}
		}
	}
}

func (m *Metrics) writeEMF(ctx context.Context, w io.Writer, o CloudWatch, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	s, err := m.state.read(ctx)
	if err != nil {
		return err
	}
	line, err := emfLine(o, now, s.totalSeats, s.totalStages)
	if err != nil {
		return err
	}
	// One write per line, so that nothing else written to w splits it.
	if _, err := w.Write(line); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	return nil
}

// emfLine is one embedded metric format document and its newline: the
// _aws metadata (the time in milliseconds, one metric directive) and, at
// the top level, the dimensions' and metrics' values the directive names.
func emfLine(o CloudWatch, now time.Time, viewers, stages int) ([]byte, error) {
	type metric struct {
		Name string `json:"Name"`
		Unit string `json:"Unit"`
	}
	type directive struct {
		Namespace  string     `json:"Namespace"`
		Dimensions [][]string `json:"Dimensions"`
		Metrics    []metric   `json:"Metrics"`
	}
	doc := struct {
		AWS struct {
			Timestamp         int64       `json:"Timestamp"`
			CloudWatchMetrics []directive `json:"CloudWatchMetrics"`
		} `json:"_aws"`
		Environment  string `json:"Environment"`
		Service      string `json:"Service"`
		TotalViewers int    `json:"TotalViewers"`
		ActiveStages int    `json:"ActiveStages"`
	}{Environment: o.Environment, Service: ServiceName, TotalViewers: viewers, ActiveStages: stages}
	doc.AWS.Timestamp = now.UnixMilli()
	doc.AWS.CloudWatchMetrics = []directive{{
		Namespace:  o.Namespace,
		Dimensions: [][]string{{"Environment", "Service"}},
		Metrics:    []metric{{"TotalViewers", "Count"}, {"ActiveStages", "Count"}},
	}}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
