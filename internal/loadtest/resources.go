package loadtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

// Process is a process of the deployment under test whose peak memory the
// report gives, such as one stagefleet serve, the emulator or Redis.
type Process struct {
	Name string
	PID  int
}

// ParseProcess reads NAME=PID.
func ParseProcess(s string) (Process, error) {
	name, pid, ok := strings.Cut(s, "=")
	n, err := strconv.Atoi(pid)
	if !ok || name == "" || err != nil || n <= 0 {
		return Process{}, fmt.Errorf("%q: want NAME=PID, e.g. serve-1=4242", s)
	}
	return Process{Name: name, PID: n}, nil
}

// Resources is what the deployment used during the run.
type Resources struct {
	Processes []ProcessPeak `json:"processes"`
	Redis     *RedisUsage   `json:"redis,omitempty"`
}

// ProcessPeak is a process's peak resident memory (VmHWM) and the CPU it
// used, from its start: for a process started for the run, the run's.
type ProcessPeak struct {
	Name         string  `json:"name"`
	PID          int     `json:"pid"`
	PeakRSSBytes int64   `json:"peakRssBytes"`
	CPUSeconds   float64 `json:"cpuSeconds"`
	// Error says why the peak could not be read (the process had ended).
	Error string `json:"error,omitempty"`
}

// RedisUsage is what Redis did from the first viewer to the end of the
// run, from its INFO. Commands count the commands inside scripts too;
// ScriptCalls are the seat scripts' calls, where one call carries a batch
// of seat operations (joins, renewals, releases).
type RedisUsage struct {
	// APIRequests are the requests made of the API over the same time:
	// viewer tokens (retries included), renewals and leaves.
	APIRequests           int64   `json:"apiRequests"`
	Commands              int64   `json:"commands"`
	CommandsPerRequest    float64 `json:"commandsPerRequest"`
	ScriptCalls           int64   `json:"scriptCalls"`
	ScriptCallsPerRequest float64 `json:"scriptCallsPerRequest"`
	CPUSeconds            float64 `json:"cpuSeconds"`
	CPUMicrosPerRequest   float64 `json:"cpuMicrosPerRequest"`
	BaselineMemoryBytes   int64   `json:"baselineMemoryBytes"`
	PeakMemoryBytes       int64   `json:"peakMemoryBytes"`
	AudienceMemoryBytes   int64   `json:"audienceMemoryBytes,omitempty"`
	AudienceSeats         int     `json:"audienceSeats,omitempty"`
	BytesPerSeat          float64 `json:"bytesPerSeat,omitempty"`
}

// resources measures the deployment's processes and its Redis.
type resources struct {
	procs []Process
	rdb   *goredis.Client
	redis *RedisUsage
	// The counters at begin.
	commands, cpu, scripts float64
	requests               int64
}

// newResources connects to the Redis at redisURL ("": none), on this
// machine only.
func newResources(procs []Process, redisURL string) (*resources, error) {
	r := &resources{procs: procs}
	if redisURL == "" {
		return r, nil
	}
	opts, err := goredis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w", err)
	}
	if !emulator.IsLoopbackAddr(opts.Addr) {
		return nil, fmt.Errorf("--redis %q: the load test only reads a Redis on this machine (127.0.0.1, ::1 or localhost), not %s", redisURL, opts.Addr)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: loopbackOnly}
	opts.Dialer = dialer.DialContext
	r.rdb = goredis.NewClient(opts)
	return r, nil
}

func (r *resources) close() {
	if r.rdb != nil {
		_ = r.rdb.Close()
	}
}

// info reads Redis's INFO sections as numbers by field name; commandstats'
// calls come as "cmdstat_NAME.calls".
func (r *resources) info(ctx context.Context) (map[string]float64, error) {
	sections, err := r.rdb.InfoMap(ctx, "stats", "memory", "cpu", "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO: %w", err)
	}
	out := map[string]float64{}
	for _, fields := range sections {
		for k, v := range fields {
			if strings.HasPrefix(k, "cmdstat_") {
				for field := range strings.SplitSeq(v, ",") {
					if n, c, ok := strings.Cut(field, "="); ok && n == "calls" {
						if f, err := strconv.ParseFloat(c, 64); err == nil {
							out[k+".calls"] = f
						}
					}
				}
			} else if f, err := strconv.ParseFloat(v, 64); err == nil {
				out[k] = f
			}
		}
	}
	return out, nil
}

func scriptCalls(info map[string]float64) float64 {
	return info["cmdstat_evalsha.calls"] + info["cmdstat_eval.calls"] + info["cmdstat_evalsha_ro.calls"] + info["cmdstat_eval_ro.calls"]
}

// begin takes Redis's baseline as the viewers start; requests is the API
// requests made so far.
func (r *resources) begin(ctx context.Context, requests int64) error {
	if r.rdb == nil {
		return nil
	}
	info, err := r.info(ctx)
	if err != nil {
		return err
	}
	r.redis = &RedisUsage{BaselineMemoryBytes: int64(info["used_memory"])}
	r.commands, r.cpu, r.scripts = info["total_commands_processed"], info["used_cpu_user"]+info["used_cpu_sys"], scriptCalls(info)
	r.requests = requests
	return nil
}

// audience records Redis's memory with seats held, for the cost of a seat.
func (r *resources) audience(ctx context.Context, seats int) error {
	if r.redis == nil {
		return nil
	}
	info, err := r.info(ctx)
	if err != nil {
		return err
	}
	u := r.redis
	u.AudienceMemoryBytes, u.AudienceSeats = int64(info["used_memory"]), seats
	if seats > 0 {
		u.BytesPerSeat = float64(u.AudienceMemoryBytes-u.BaselineMemoryBytes) / float64(seats)
	}
	return nil
}

// end reads every process's peak and what Redis did since begin.
func (r *resources) end(ctx context.Context, requests int64) (*Resources, error) {
	out := &Resources{Processes: []ProcessPeak{}}
	procs := r.procs
	if len(procs) > 0 {
		// Where the time went includes the load's own share.
		procs = append(slices.Clone(procs), Process{Name: "loadtest", PID: os.Getpid()})
	}
	for _, p := range procs {
		pk := ProcessPeak{Name: p.Name, PID: p.PID}
		var err error
		if pk.PeakRSSBytes, err = peakRSS(p.PID); err == nil {
			pk.CPUSeconds, err = cpuSeconds(p.PID)
		}
		if err != nil {
			pk.Error = err.Error()
		}
		out.Processes = append(out.Processes, pk)
	}
	if r.redis == nil {
		return out, nil
	}
	info, err := r.info(ctx)
	if err != nil {
		return out, err
	}
	u := r.redis
	u.PeakMemoryBytes = int64(info["used_memory_peak"])
	u.APIRequests = requests - r.requests
	u.Commands = int64(info["total_commands_processed"] - r.commands)
	u.ScriptCalls = int64(scriptCalls(info) - r.scripts)
	u.CPUSeconds = round3(info["used_cpu_user"] + info["used_cpu_sys"] - r.cpu)
	if n := float64(u.APIRequests); n > 0 {
		u.CommandsPerRequest = round3(float64(u.Commands) / n)
		u.ScriptCallsPerRequest = round3(float64(u.ScriptCalls) / n)
		u.CPUMicrosPerRequest = round3(u.CPUSeconds * 1e6 / n)
	}
	u.BytesPerSeat = round3(u.BytesPerSeat)
	out.Redis = u
	return out, nil
}

// clockTicks is Linux's USER_HZ, the unit of /proc/PID/stat's times: 100
// on every architecture Go supports.
const clockTicks = 100

// cpuSeconds reads a process's user and system time from /proc (Linux).
func cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the CPU time of process %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: the fields that
	// follow are counted from its end.
	i := strings.LastIndexByte(string(raw), ')')
	fields := strings.Fields(string(raw[i+1:]))
	if i < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("process %d: /proc/%d/stat is not as Linux writes it", pid, pid)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process %d: /proc/%d/stat: %w", pid, pid, err)
		}
		ticks += n
	}
	return float64(ticks) / clockTicks, nil
}

// peakRSS reads a process's VmHWM from /proc (Linux).
func peakRSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the peak memory of process %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("process %d: VmHWM %q: %w", pid, v, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("process %d: no VmHWM in /proc/%d/status", pid, pid)
}
