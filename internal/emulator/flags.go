package emulator

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// RegisterFlags binds the emulator's settings to fs, with c's current values
// as defaults. prefix is put before every flag name ("" for the standalone
// emulator, "emulator-" when it is embedded in another command).
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.Region, prefix+"region", c.Region, "AWS region the emulated account is in")
	fs.StringVar(&c.AccountID, prefix+"account-id", c.AccountID, "AWS account id in the ARNs")
	fs.IntVar(&c.StageCapacity, prefix+"stage-capacity", c.StageCapacity, "subscribers one stage holds")
	fs.IntVar(&c.MaxPublishers, prefix+"max-publishers", c.MaxPublishers, "publishers one stage holds")
	fs.IntVar(&c.MaxStages, prefix+"max-stages", c.MaxStages, "stages per account")
	fs.Func(prefix+"quota", "per-operation TPS quotas to override, e.g. CreateStage=10,ListStages=0 (0: unlimited)", func(s string) error {
		q, err := parseList(s, func(v string) (float64, error) {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil && f < 0 {
				err = fmt.Errorf("must not be negative")
			}
			return f, err
		})
		if err != nil {
			return err
		}
		if c.Quotas == nil {
			c.Quotas = map[string]float64{}
		}
		for op, tps := range q {
			if err := checkOperation(op, false); err != nil {
				return err
			}
			c.Quotas[op] = tps
		}
		return nil
	})
	fs.BoolFunc(prefix+"no-quotas", "serve every operation without a rate limit", func(string) error {
		c.Quotas = map[string]float64{}
		return nil
	})
	fs.Func(prefix+"latency", "per-operation latency, e.g. CreateStage=300ms,*=20ms (at most 20s)", func(s string) error {
		l, err := parseList(s, func(v string) (time.Duration, error) {
			d, err := time.ParseDuration(v)
			if err == nil {
				err = checkLatency(d)
			}
			return d, err
		})
		if err != nil {
			return err
		}
		for op := range l {
			if err := checkOperation(op, true); err != nil {
				return err
			}
		}
		c.Latency = l
		return nil
	})
	fs.DurationVar(&c.ReplicaDelay, prefix+"replica-delay", c.ReplicaDelay, "time a started replication takes to become ACTIVE")
	fs.Func(prefix+"events-url", "URL to POST every IVS event to (repeatable)", func(s string) error {
		c.EventsURLs = append(c.EventsURLs, s)
		return nil
	})
	fs.StringVar(&c.EventsSecret, prefix+"events-secret", c.EventsSecret, "value of header x-stagefleet-events-secret on event deliveries")
	fs.Float64Var(&c.Delivery.DropRate, prefix+"events-drop", c.Delivery.DropRate, "share of events never delivered (0-1)")
	fs.Float64Var(&c.Delivery.DuplicateRate, prefix+"events-duplicate", c.Delivery.DuplicateRate, "share of events delivered twice (0-1)")
	fs.Func(prefix+"events-delay", "hold every event back this long, e.g. 500ms", durationMS(&c.Delivery.DelayMS))
	fs.Func(prefix+"events-reorder", "hold each event back a random time up to this long, so events arrive out of order, e.g. 2s", durationMS(&c.Delivery.ReorderWindowMS))
}

func durationMS(dst *int) func(string) error {
	return func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		if d < 0 {
			return fmt.Errorf("must not be negative")
		}
		*dst = int(d.Milliseconds())
		return nil
	}
}

func checkOperation(op string, wildcard bool) error {
	if _, ok := operations[op]; ok || (wildcard && op == "*") {
		return nil
	}
	return fmt.Errorf("%q is not an IVS real-time operation this emulator serves", op)
}

// parseList parses "Key=value,Key=value".
func parseList[T any](s string, parse func(string) (T, error)) (map[string]T, error) {
	out := map[string]T{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not Operation=value", item)
		}
		val, err := parse(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out[k] = val
	}
	return out, nil
}
