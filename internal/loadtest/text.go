package loadtest

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes the report for a person to read.
func (rep *Report) WriteText(w io.Writer) error {
	s := rep.Settings
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	var b strings.Builder
	if rep.Scenario == Million {
		fmt.Fprintf(&b, "stagefleet loadtest: %s, %d viewers at up to %g/s over %d broadcast(s), %d workers, %d renewal round(s) once all are seated, hold %v\n",
			rep.Scenario, s.Viewers, s.Rate, s.Broadcasts, s.Concurrency, s.RenewalRounds, sec(s.HoldSeconds))
	} else {
		fmt.Fprintf(&b, "stagefleet loadtest: %s, %d viewers at %g/s over %d broadcast(s), hold %v, heartbeat %v\n",
			rep.Scenario, s.Viewers, s.Rate, s.Broadcasts, sec(s.HoldSeconds), sec(s.HeartbeatSeconds))
	}
	fmt.Fprintf(&b, "api %s, emulator %s, capacity %d, threshold %d; ran %s (%s)\n",
		rep.API, rep.Emulator, s.Capacity, s.Threshold, fmtDuration(sec(rep.DurationSeconds)), rep.StoppedBy)
	fmt.Fprintf(&b, "broadcasts %s\n", strings.Join(rep.Broadcasts, ", "))
	for _, w := range rep.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	v := rep.Viewers
	fmt.Fprintf(tw, "viewers\t%d planned, %d requested, %d seated, %d left, %d stopped waiting; %.1f joins/s\n",
		v.Planned, v.Requested, v.Seated, v.Left, v.StoppedWaiting, v.JoinsPerSecond)
	fmt.Fprintf(tw, "token latency\t%s\n", fmtDistribution(rep.TokenLatency))
	fmt.Fprintf(tw, "time to seat\t%s\n", fmtDistribution(rep.TimeToSeat))
	fmt.Fprintf(tw, "refused (retried)\t%s\n", fmtCounts(rep.Refused))
	fmt.Fprintf(tw, "errors\t%s\n", fmtCounts(rep.Errors))
	st := rep.Stages
	fmt.Fprintf(tw, "stages\tpeak %d (%d replicas); most seats on one stage %d of %d; %d over capacity\n",
		st.Peak, st.PeakReplicas, st.MaxSeats, st.Capacity, st.OverCapacity)
	fmt.Fprintf(tw, "stages over time\t%s\n", fmtSeries(rep.Series))
	fmt.Fprintf(tw, "replication lag\t%s (to within %s)\n", fmtDistribution(rep.ReplicationLag), fmtDuration(time.Duration(s.SampleIntervalMs*float64(time.Millisecond))))
	f := rep.Flap
	fmt.Fprintf(tw, "flap\t%d replicas created, %d deleted; most creations of one slot per %s: %d\n",
		f.ReplicasCreated, f.ReplicasDeleted, fmtDuration(sec(f.WindowSeconds)), f.MostCreationsPerSlot)
	if d := rep.Drain; d != nil {
		event := "everyone left"
		if rep.Scenario == Million {
			event = "the broadcast ended"
		}
		if d.DrainedAfterSeconds != nil {
			fmt.Fprintf(tw, "drain\tno replica stage left; the last went %s after %s\n", fmtDuration(sec(*d.DrainedAfterSeconds)), event)
		} else {
			fmt.Fprintf(tw, "drain\t%d replica stage(s) left after %s: %s\n", len(d.ReplicasLeft), fmtDuration(sec(d.WaitSeconds)), strings.Join(d.ReplicasLeft, ", "))
		}
	}
	if rc := rep.Renewals; rc != nil {
		fmt.Fprintf(tw, "renewals\t%d of %d renewed in %d round(s) after everyone was seated (each seat once a round, as fast as %d workers go), %.0f/s\n",
			rc.Renewed, rc.Requested, rc.Rounds, s.Concurrency, rc.PerSecond)
	}
	for _, e := range rep.Ends {
		if e.Error != "" {
			fmt.Fprintf(tw, "end of %s\tfailed after %s: %s\n", e.Broadcast, fmtDuration(sec(e.Seconds)), e.Error)
			continue
		}
		fmt.Fprintf(tw, "end of %s\t%s: %d stages deleted, %d seats freed\n", e.Broadcast, fmtDuration(sec(e.Seconds)), e.StagesDeleted, e.SeatsFreed)
	}
	if res := rep.Resources; res != nil {
		for _, p := range res.Processes {
			if p.Error != "" {
				fmt.Fprintf(tw, "peak memory %s\tunknown: %s\n", p.Name, p.Error)
				continue
			}
			fmt.Fprintf(tw, "peak memory %s\t%s, %.1f s of CPU (pid %d)\n", p.Name, fmtBytes(p.PeakRSSBytes), p.CPUSeconds, p.PID)
		}
		if u := res.Redis; u != nil {
			fmt.Fprintf(tw, "redis\t%d API requests: %d commands (%.3f each, commands inside scripts included), %d script calls (%.3f each), %.1f s of CPU (%.1f µs each)\n",
				u.APIRequests, u.Commands, u.CommandsPerRequest, u.ScriptCalls, u.ScriptCallsPerRequest, u.CPUSeconds, u.CPUMicrosPerRequest)
			fmt.Fprintf(tw, "redis memory\tpeak %s; %s before the viewers", fmtBytes(u.PeakMemoryBytes), fmtBytes(u.BaselineMemoryBytes))
			if u.AudienceSeats > 0 {
				fmt.Fprintf(tw, ", %s with %d seats held (%.0f B a seat)", fmtBytes(u.AudienceMemoryBytes), u.AudienceSeats, u.BytesPerSeat)
			}
			fmt.Fprintln(tw)
		}
	}
	if rep.SamplesFailed > 0 {
		fmt.Fprintf(tw, "samples failed\t%d\n", rep.SamplesFailed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.WriteString("\nIVS calls during the run:\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  operation\tcalls\tthrottled\terrors\tpeak/s\tquota/s")
	for _, c := range rep.IVSCalls {
		quota := "none"
		if c.QuotaPerSecond > 0 {
			quota = fmt.Sprintf("%g", c.QuotaPerSecond)
		}
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%.1f\t%s\n", c.Operation, c.Calls, c.Throttled, c.Errors, c.PeakPerSecond, quota)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.WriteString("\ntargets:\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, t := range rep.Targets {
		verdict := "PASS"
		if !t.Pass {
			verdict = "FAIL"
		}
		line := fmt.Sprintf("  %s\t%s\t%s (want %s)", verdict, t.Name, t.Got, t.Want)
		if t.Miss != "" {
			line += ": " + t.Miss
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Pass {
		b.WriteString("result: PASS\n")
	} else {
		fmt.Fprintf(&b, "result: FAIL (%d of %d targets missed)\n", len(rep.Missed()), len(rep.Targets))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// fmtBytes prints a size in MB (10⁶ bytes), or in kB below one.
func fmtBytes(n int64) string {
	if n < 1_000_000 {
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

func fmtDistribution(d Distribution) string {
	if d.Count == 0 {
		return "none measured"
	}
	f := func(v float64) string { return fmtDuration(time.Duration(v * float64(time.Millisecond))) }
	return fmt.Sprintf("p50 %s, p95 %s, p99 %s, max %s (%d)", f(d.P50Ms), f(d.P95Ms), f(d.P99Ms), f(d.MaxMs), d.Count)
}

func fmtCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// fmtSeries shows the stage count at up to a dozen evenly spread samples.
func fmtSeries(series []Sample) string {
	if len(series) == 0 {
		return "no sample"
	}
	const points = 12
	var parts []string
	last := -1
	for k := range points {
		i := k * (len(series) - 1) / (points - 1)
		if i == last {
			continue
		}
		last = i
		parts = append(parts, fmt.Sprintf("%.1fs %d", series[i].Seconds, series[i].Stages))
	}
	return strings.Join(parts, ", ")
}

// Missed names the targets the run missed.
func (rep *Report) Missed() []string {
	var out []string
	for _, t := range rep.Targets {
		if !t.Pass {
			out = append(out, t.Name)
		}
	}
	return out
}
