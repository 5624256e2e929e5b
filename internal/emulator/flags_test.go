package emulator

import (
	"flag"
	"io"
	"maps"
	"strings"
	"testing"
	"time"
)

// parseFlags parses args into a default config.
func parseFlags(prefix string, args ...string) (Config, error) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("emulator", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs, prefix)
	return c, fs.Parse(args)
}

func TestRegisterFlags(t *testing.T) {
	c, err := parseFlags("",
		"-quota", "CreateStage=10,ListStages=0",
		"-latency", "CreateStage=300ms,*=20ms",
		"-replica-delay", "1s",
		"-events-reorder", "2s",
	)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	wantQuotas := DefaultQuotas()
	wantQuotas["CreateStage"] = 10
	wantQuotas["ListStages"] = 0
	if !maps.Equal(c.Quotas, wantQuotas) {
		t.Errorf("quotas %v, want %v", c.Quotas, wantQuotas)
	}
	if want := map[string]time.Duration{"CreateStage": 300 * time.Millisecond, "*": 20 * time.Millisecond}; !maps.Equal(c.Latency, want) {
		t.Errorf("latency %v, want %v", c.Latency, want)
	}
	if c.ReplicaDelay != time.Second {
		t.Errorf("replica delay %v, want 1s", c.ReplicaDelay)
	}
	if c.Delivery.ReorderWindowMS != 2000 {
		t.Errorf("reorder window %d ms, want 2000", c.Delivery.ReorderWindowMS)
	}

	c, err = parseFlags("", "-no-quotas")
	if err != nil {
		t.Fatalf("parse -no-quotas: %v", err)
	}
	if len(c.Quotas) != 0 {
		t.Errorf("quotas %v after -no-quotas, want none", c.Quotas)
	}

	c, err = parseFlags("emulator-", "-emulator-replica-delay", "250ms")
	if err != nil || c.ReplicaDelay != 250*time.Millisecond {
		t.Errorf("-emulator-replica-delay 250ms: delay %v, error %v", c.ReplicaDelay, err)
	}
}

func TestRegisterFlagsRejects(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"-quota", "Nope=1"}, `"Nope" is not an IVS real-time operation`},
		{[]string{"-quota", "CreateStage=-1"}, "CreateStage: must not be negative"},
		{[]string{"-latency", "CreateStage=fast"}, `CreateStage: time: invalid duration "fast"`},
		{[]string{"-latency", "x"}, `"x" is not Operation=value`},
		{[]string{"-latency", "CreateStage=21s"}, "CreateStage: latency 21s is more than the 20s allowed"},
		{[]string{"-latency", "*=-1ms"}, "*: latency must not be negative"},
	} {
		_, err := parseFlags("", c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one containing %q", c.args, err, c.want)
		}
	}
}
