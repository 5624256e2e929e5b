package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/ivs"
	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/testproc"
	"github.com/stagefleet/stagefleet/internal/token"
)

// The tests here run stagefleet as it is deployed at scale: several
// `stagefleet serve` processes sharing one Redis, in front of one
// standalone `stagefleet emulator`, each a real process of the real binary.

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds cmd/stagefleet once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		var err error
		if binDir, err = os.MkdirTemp("", "stagefleet-bin"); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(binDir, "stagefleet")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/stagefleet/stagefleet/cmd/stagefleet").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// process is one running stagefleet command.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProcess(t *testing.T, name string, env []string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	testproc.BindToParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.signal(syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			if raw, err := os.ReadFile(logPath); err == nil {
				tail := raw[max(0, len(raw)-4000):]
				t.Logf("last lines of %s's log:\n%s", name, tail)
			}
		}
	})
	return p
}

func (p *process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// cluster is N instances sharing one Redis and one emulator.
type cluster struct {
	redis     *redistest.Server
	emu       *process
	emuURL    string
	instances []*testApp
	procs     []*process
}

// startCluster starts the emulator (args: extra emulator flags), a Redis
// and n instances configured by env on top of the defaults here.
func startCluster(t *testing.T, n int, env map[string]string, emuArgs ...string) *cluster {
	t.Helper()
	c := &cluster{}
	if env["REDIS_URL"] == "" {
		c.redis = redistest.Start(t)
	}
	ports := make([]int, n)
	for i := range ports {
		ports[i] = testproc.FreePort(t)
	}
	emuPort := testproc.FreePort(t)
	c.emuURL = fmt.Sprintf("http://127.0.0.1:%d", emuPort)
	args := []string{"emulator", "--addr", fmt.Sprintf("127.0.0.1:%d", emuPort), "--events-secret", "events-secret", "--log-level", "warn"}
	// EventBridge delivers each event once, to the load balancer: here,
	// to every instance in turn would need one; each event goes to all of
	// them instead, and the store's de-duplication must keep it to one.
	for _, p := range ports {
		args = append(args, "--events-url", fmt.Sprintf("http://127.0.0.1:%d/api/events/ivs", p))
	}
	c.emu = startProcess(t, "emulator", nil, append(args, emuArgs...)...)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	waitHTTP(t, client, c.emuURL+"/_emulator/state")

	keyFile, keyArn := tokenKey(t, c.emuURL)
	base := map[string]string{
		"AWS_ACCESS_KEY_ID":          "stagefleet",
		"AWS_SECRET_ACCESS_KEY":      "emulator",
		"AWS_REGION":                 "us-east-1",
		"IVS_ENDPOINT":               c.emuURL,
		"IVS_TOKEN_KEY_ARN":          keyArn,
		"IVS_TOKEN_PRIVATE_KEY_FILE": keyFile,
		"API_SECRET_KEY":             "api-secret",
		"EVENTS_SECRET":              "events-secret",
		"DATA_DIR":                   t.TempDir(),
		"API_HOST":                   "127.0.0.1",
		"RATE_LIMIT_MAX_REQUESTS":    "0",
		"LOG_LEVEL":                  "warn",
	}
	if c.redis != nil {
		base["REDIS_URL"] = c.redis.URL()
	}
	maps.Copy(base, env)
	for i, port := range ports {
		vars := maps.Clone(base)
		vars["API_PORT"] = strconv.Itoa(port)
		vars["INSTANCE_ID"] = fmt.Sprintf("instance-%d", i)
		var list []string
		for k, v := range vars {
			list = append(list, k+"="+v)
		}
		c.procs = append(c.procs, startProcess(t, vars["INSTANCE_ID"], list, "serve"))
		a := &testApp{base: fmt.Sprintf("http://127.0.0.1:%d", port), emu: c.emuURL, client: client, headers: http.Header{"X-Api-Key": {"api-secret"}}}
		waitHTTP(t, client, a.base+"/api/health")
		c.instances = append(c.instances, a)
	}
	return c
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, client *http.Client, url string) {
	t.Helper()
	eventually(t, 30*time.Second, func() (bool, string) {
		resp, err := client.Get(url)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", url, err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("%s answers %d", url, resp.StatusCode)
	})
}

// tokenKey makes a signing key, imports its public half into the emulator
// as an operator would with ImportPublicKey, and returns the private key's
// file and the public key's ARN.
func tokenKey(t *testing.T, emuURL string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "token.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := token.PublicKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	client := ivs.New(ivs.Options{
		Config:   aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("stagefleet", "emulator", "")},
		Endpoint: emuURL,
	})
	arn, err := client.ImportPublicKey(t.Context(), "multi-instance", pub)
	if err != nil {
		t.Fatalf("ImportPublicKey: %v", err)
	}
	return file, arn
}

// viewer is one seated viewer.
type viewer struct {
	user  string
	token tokenData
	wait  time.Duration
}

// storm asks for n viewer tokens at once, spread over the instances
// (viewer i on instance i mod N), each retrying as a player behind a load
// balancer does: a 503 after Retry-After, a failed connection at once on
// the next instance. It gives up at deadline. It does not touch t, so it
// may run beside the test; the result tells what happened.
type stormResult struct {
	viewers []viewer
	errs    []error
	// connErrs counts requests that found their instance gone.
	connErrs atomic.Int64
}

func (c *cluster) storm(ctx context.Context, prefix string, n int, deadline time.Duration) *stormResult {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	res := &stormResult{viewers: make([]viewer, n)}
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			user := fmt.Sprintf("%s-%d", prefix, i)
			start := time.Now()
			for attempt := 0; ; attempt++ {
				a := c.instances[(i+attempt)%len(c.instances)]
				r, err := a.send(ctx, "POST", "/api/token/viewer", map[string]any{"userId": user}, nil)
				wait := 0
				switch {
				case err != nil && ctx.Err() == nil:
					res.connErrs.Add(1)
				case err != nil:
					errs <- fmt.Errorf("viewer %s: no seat within %v: %w", user, deadline, err)
					return
				case r.Status == http.StatusOK:
					var tok tokenData
					if err := json.Unmarshal(r.Env.Data, &tok); err != nil {
						errs <- fmt.Errorf("viewer %s: %w", user, err)
						return
					}
					res.viewers[i] = viewer{user: user, token: tok, wait: time.Since(start)}
					return
				case r.Status != http.StatusServiceUnavailable:
					errs <- fmt.Errorf("viewer %s: %s", user, r)
					return
				default:
					wait, _ = strconv.Atoi(r.Header.Get("Retry-After"))
					wait = max(wait, 1)
				}
				select {
				case <-ctx.Done():
					errs <- fmt.Errorf("viewer %s: no seat within %v", user, deadline)
					return
				case <-time.After(time.Duration(wait) * time.Second):
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		res.errs = append(res.errs, err)
	}
	return res
}

// seatAll runs a storm and requires every viewer seated.
func (c *cluster) seatAll(t *testing.T, prefix string, n int, deadline time.Duration) []viewer {
	t.Helper()
	res := c.storm(t.Context(), prefix, n, deadline)
	requireSeated(t, res)
	return res.viewers
}

func requireSeated(t *testing.T, res *stormResult) {
	t.Helper()
	for i, err := range res.errs {
		if i == 5 {
			break
		}
		t.Error(err)
	}
	if len(res.errs) > 0 {
		t.Fatalf("%d of %d viewers were not seated", len(res.errs), len(res.viewers))
	}
}

// joinAllEmu joins every viewer to the stage its token names, in the
// emulator, as players do.
func (c *cluster) joinAllEmu(t *testing.T, vs []viewer) {
	t.Helper()
	a := c.instances[0]
	work := make(chan viewer)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for v := range work {
				status, raw := a.emuPost(t, "/_emulator/participants/join", map[string]string{"token": v.token.Token})
				if status != http.StatusOK {
					t.Errorf("viewer %s could not join %s: %d %s", v.user, v.token.StageArn, status, raw)
				}
			}
		})
	}
	for _, v := range vs {
		work <- v
	}
	close(work)
	wg.Wait()
}

// checkFleet checks the invariants in IVS (the emulator): no stage above
// capacity, and every replica stage with exactly one ACTIVE replication of
// the host. It returns the broadcast's stages in IVS.
func (c *cluster) checkFleet(t *testing.T, hostID string, capacity int) []string {
	t.Helper()
	// A replica made as the storm ends (the policy's headroom) gets its
	// replication a moment later: wait for it, no longer than a pass's
	// retry would take.
	eventually(t, 10*time.Second, func() (bool, string) {
		s := c.instances[0].emuState(t)
		for _, st := range s.Stages {
			if st.Tags["stagefleet:broadcast"] == "default" && st.Tags["stagefleet:role"] == "replica" && activeIn(s, st.Arn, hostID) != 1 {
				return false, fmt.Sprintf("replica stage %s has %d ACTIVE replications of the host, want 1", st.Arn, activeIn(s, st.Arn, hostID))
			}
		}
		return true, ""
	})
	s := c.instances[0].emuState(t)
	var arns []string
	for _, st := range s.Stages {
		if st.Tags["stagefleet:broadcast"] != "default" {
			continue
		}
		arns = append(arns, st.Arn)
		if st.MaxSubscribers > capacity {
			t.Errorf("stage %s held %d subscribers at once; capacity is %d", st.Arn, st.MaxSubscribers, capacity)
		}
		if st.Tags["stagefleet:role"] == "replica" {
			if n := activeIn(s, st.Arn, hostID); n != 1 {
				t.Errorf("replica stage %s has %d ACTIVE replications of the host, want 1", st.Arn, n)
			}
		}
	}
	return arns
}

// startStormCluster starts three instances and the emulator for a join
// storm on stages of capacity, at most maxStages of them, with extra
// settings on top.
func startStormCluster(t *testing.T, capacity, maxStages int, extra map[string]string) *cluster {
	t.Helper()
	env := map[string]string{
		"STAGE_CAPACITY":     strconv.Itoa(capacity),
		"SCALE_UP_THRESHOLD": "45",
		"MAX_STAGES":         strconv.Itoa(maxStages),
		"SEAT_WAIT":          "30s",
		"RECONCILE_INTERVAL": "2s",
		"LEASE_TTL":          "2s",
		"HEARTBEAT_TIMEOUT":  "10m",
	}
	maps.Copy(env, extra)
	return startCluster(t, 3, env, "--stage-capacity", strconv.Itoa(capacity), "--max-stages", "200",
		"--latency", "CreateStage=300ms", "--replica-delay", "500ms")
}

// checkSeatsCounted checks that every instance counts want seats in the
// broadcast: they all see the same fleet.
func (c *cluster) checkSeatsCounted(t *testing.T, want int) {
	t.Helper()
	for i, a := range c.instances {
		seats := 0
		for _, st := range a.stages(t, "default") {
			seats += st.Seats
		}
		if seats != want {
			t.Errorf("instance %d counts %d seats, want %d", i, seats, want)
		}
	}
}

// checkGiven counts the viewers given each stage, none beyond capacity.
func checkGiven(t *testing.T, vs []viewer, capacity int) map[string]int {
	t.Helper()
	perStage := map[string]int{}
	for _, v := range vs {
		perStage[v.token.StageArn]++
	}
	for arn, n := range perStage {
		if n > capacity {
			t.Errorf("stage %s was given %d viewers; capacity is %d", arn, n, capacity)
		}
	}
	return perStage
}

// TestMultiInstance: three instances, one Redis, one emulator; 3,000
// viewers ask at once, spread over the three.
func TestMultiInstance(t *testing.T) {
	const viewers, capacity = 3000, 50
	c := startStormCluster(t, capacity, 80, nil)
	host := c.instances[0].goLive(t, "default", "host-1")

	start := time.Now()
	vs := c.seatAll(t, "viewer", viewers, 3*time.Minute)
	took := time.Since(start)
	c.joinAllEmu(t, vs)

	perStage := checkGiven(t, vs, capacity)
	waits := make([]time.Duration, 0, len(vs))
	for _, v := range vs {
		waits = append(waits, v.wait)
	}
	stages := c.checkFleet(t, host.ParticipantID, capacity)
	// The policy asks for the audience's stages plus its headroom: at
	// least STAGE_CAPACITY - SCALE_UP_THRESHOLD free seats, more while
	// viewers arrive fast (arrival rate x provisioning time: a few stages
	// here). Instances scaling alone would each add their own, two to
	// three times the audience's stages.
	need := int(math.Ceil(float64(viewers) / capacity))
	if most := need + need/5; len(stages) < need || len(stages) > most {
		t.Errorf("IVS has %d stages of the broadcast for %d viewers at capacity %d; the policy asks for %d to %d", len(stages), viewers, capacity, need, most)
	}
	counters := c.instances[0].emuState(t).Counters
	if deleted := counters["DeleteStage"]; deleted.Calls > 0 {
		t.Errorf("%d DeleteStage calls during a storm: stages were created and removed", deleted.Calls)
	}
	// The quotas are the account's: the three instances draw from one
	// limiter in Redis, so together they never go past one (IVS would
	// answer ThrottlingException, which the emulator counts).
	for op, cnt := range counters {
		if cnt.Throttled > 0 {
			t.Errorf("%s: %d of %d calls throttled: the instances together went past its quota", op, cnt.Throttled, cnt.Calls)
		}
	}
	slices.Sort(waits)
	t.Logf("%d viewers seated in %v over 3 instances on %d stages (%d used); time to seat p50 %v, p99 %v, max %v",
		viewers, took.Round(time.Millisecond), len(stages), len(perStage), waits[len(waits)/2], waits[len(waits)*99/100], waits[len(waits)-1])
	c.checkSeatsCounted(t, viewers)
	c.instances[0].checkNoLeaks(t, "default")
}

// TestMultiInstanceSeatGroups: three instances on a Redis Cluster of three
// masters, each broadcast's seats split over four seat groups, in a join
// storm: every viewer is seated within capacity, every instance counts
// every seat, and the seats went to more than one group (slot).
func TestMultiInstanceSeatGroups(t *testing.T) {
	const viewers, capacity = 1500, 50
	addrs := redistest.StartCluster(t)
	c := startStormCluster(t, capacity, 60, map[string]string{
		"REDIS_URL":         "redis://" + addrs[0],
		"REDIS_CLUSTER":     "true",
		"REDIS_SEAT_GROUPS": "4",
	})
	host := c.instances[0].goLive(t, "default", "host-1")
	vs := c.seatAll(t, "viewer", viewers, 3*time.Minute)
	c.joinAllEmu(t, vs)
	checkGiven(t, vs, capacity)
	c.checkFleet(t, host.ParticipantID, capacity)
	c.checkSeatsCounted(t, viewers)
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
	defer rdb.Close()
	var mu sync.Mutex
	groups := map[string]bool{}
	err := rdb.ForEachMaster(t.Context(), func(ctx context.Context, node *goredis.Client) error {
		keys, err := node.Keys(ctx, "stagefleet:{default*}:seats").Result()
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			if node.HLen(ctx, k).Val() > 0 {
				groups[k] = true
			}
		}
		return err
	})
	if err != nil || len(groups) < 2 {
		t.Errorf("seats are held under %d group keys (%v): %v; want them spread over the groups", len(groups), err, groups)
	}
	c.instances[0].checkNoLeaks(t, "default")
}

// storeStages lists the broadcast's stage records as an instance shows
// them, by ARN.
func storeStages(t *testing.T, a *testApp) map[string]stageData {
	t.Helper()
	out := map[string]stageData{}
	for _, s := range a.stages(t, "default") {
		out[s.Arn] = s
	}
	return out
}

// ivsStages lists the broadcast's stages in the emulator.
func (c *cluster) ivsStages(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, s := range c.instances[0].emuState(t).Stages {
		if s.Tags["stagefleet:broadcast"] == "default" {
			out = append(out, s.Arn)
		}
	}
	slices.Sort(out)
	return out
}

const controlLeaseKey = "stagefleet:{default}:lease:control"

// TestMultiInstanceKill: the instance doing a scale-up is killed (SIGKILL)
// in the middle of it; the other two finish the work, and nothing is left
// behind: no stage without a record, no lease held by the dead instance
// beyond LEASE_TTL.
func TestMultiInstanceKill(t *testing.T) {
	const viewers, capacity = 600, 50
	const leaseTTL = 2 * time.Second
	c := startCluster(t, 3, map[string]string{
		"STAGE_CAPACITY":     strconv.Itoa(capacity),
		"SCALE_UP_THRESHOLD": "45",
		"MAX_STAGES":         "40",
		"SEAT_WAIT":          "30s",
		"RECONCILE_INTERVAL": "2s",
		"LEASE_TTL":          leaseTTL.String(),
		"HEARTBEAT_TIMEOUT":  "10m",
	}, "--stage-capacity", strconv.Itoa(capacity),
		// Slow creations, so that the kill lands in the middle of some.
		"--latency", "CreateStage=1s", "--replica-delay", "500ms")
	host := c.instances[0].goLive(t, "default", "host-1")
	rdb := c.redis.Client(t)

	done := make(chan *stormResult, 1)
	go func() { done <- c.storm(context.Background(), "viewer", viewers, 2*time.Minute) }()

	// Wait for a scale-up under way: a replica stage created and a pass
	// holding the broadcast, then kill that pass's instance.
	var victim int
	eventually(t, 30*time.Second, func() (bool, string) {
		holder, err := rdb.HGet(t.Context(), controlLeaseKey, "holder").Result()
		if err != nil || len(c.ivsStages(t)) < 3 {
			return false, fmt.Sprintf("no scale-up under way: lease holder %q (%v), %d stages", holder, err, len(c.ivsStages(t)))
		}
		_, err = fmt.Sscanf(holder, "instance-%d", &victim)
		return err == nil, "lease holder " + holder
	})
	killedAt := time.Now()
	c.procs[victim].signal(syscall.SIGKILL)
	<-c.procs[victim].done
	stagesAtKill := len(c.ivsStages(t))
	t.Logf("killed instance-%d during the scale-up, with %d stages in IVS", victim, stagesAtKill)

	// No lease of the dead instance's outlives LEASE_TTL.
	eventually(t, leaseTTL+time.Second, func() (bool, string) {
		holder, _ := rdb.HGet(t.Context(), controlLeaseKey, "holder").Result()
		return !strings.HasPrefix(holder, fmt.Sprintf("instance-%d-", victim)), fmt.Sprintf("the dead instance still holds the lease %v after the kill", time.Since(killedAt))
	})
	t.Logf("the dead instance's lease was gone %v after the kill (LEASE_TTL %v)", time.Since(killedAt).Round(time.Millisecond), leaseTTL)

	res := <-done
	requireSeated(t, res)
	t.Logf("%d viewers seated by the survivors; %d requests found the dead instance", viewers, res.connErrs.Load())
	survivor := c.instances[(victim+1)%3]
	// Its half-done work (a stage created but not yet recorded) is taken
	// over by reconcile: every stage in IVS is recorded, none twice.
	eventually(t, 10*time.Second, func() (bool, string) {
		ivsArns := c.ivsStages(t)
		recorded := slices.Sorted(maps.Keys(storeStages(t, survivor)))
		return slices.Equal(ivsArns, recorded), fmt.Sprintf("IVS has %v, the store %v", ivsArns, recorded)
	})
	c.joinAllEmu(t, res.viewers)
	// A stage the dead instance created but had not recorded is adopted
	// by reconcile, and replicated by the pass after.
	eventually(t, 15*time.Second, func() (bool, string) {
		s := c.instances[0].emuState(t)
		for _, st := range s.Stages {
			if st.Tags["stagefleet:role"] == "replica" && activeIn(s, st.Arn, host.ParticipantID) != 1 {
				return false, fmt.Sprintf("replica stage %s has %d ACTIVE replications of the host", st.Arn, activeIn(s, st.Arn, host.ParticipantID))
			}
		}
		return true, ""
	})
	c.checkFleet(t, host.ParticipantID, capacity)
	// A stage's seats are the viewers given tokens for it.
	perStage := map[string]int{}
	for _, v := range res.viewers {
		perStage[v.token.StageArn]++
	}
	for arn, st := range storeStages(t, survivor) {
		if st.Seats != perStage[arn] {
			t.Errorf("stage %s counts %d seats; %d viewers were given it", arn, st.Seats, perStage[arn])
		}
	}
}

// TestMultiInstanceEndKill: the instance ending a broadcast is killed
// (SIGKILL) with some of its stages deleted; the survivor finishes the end
// on its own (no second DELETE): every stage gone from IVS, the broadcast
// gone, and its next host starts it anew.
func TestMultiInstanceEndKill(t *testing.T) {
	c := startCluster(t, 2, map[string]string{
		"MIN_IDLE_STAGES":    "4",
		"RECONCILE_INTERVAL": "1s",
		"LEASE_TTL":          "2s",
	}, "--latency", "DeleteStage=1s")
	end, survivor := c.instances[0], c.instances[1]
	host := end.goLive(t, "default", "host-1")
	eventually(t, 30*time.Second, func() (bool, string) {
		n := len(c.ivsStages(t))
		return n == 5, fmt.Sprintf("%d stages in IVS, want the origin and 4 idle replicas", n)
	})
	before := c.ivsStages(t)
	created := end.emuState(t).Counters["CreateStage"].Calls

	go func() {
		// Cut off by the kill: its answer is not looked at.
		_, _ = end.send(context.Background(), "DELETE", "/api/broadcasts/default", nil, nil)
	}()
	eventually(t, 20*time.Second, func() (bool, string) {
		n := len(c.ivsStages(t))
		return n < len(before) && n > 1, fmt.Sprintf("%d of %d stages left in IVS; want the end under way", n, len(before))
	})
	killed := time.Now()
	c.procs[0].signal(syscall.SIGKILL)
	<-c.procs[0].done
	leftAtKill := len(c.ivsStages(t))
	// The dead instance holds the broadcast until LEASE_TTL: the end is
	// pending, and the survivor says so.
	wantError(t, survivor.call(t, "POST", "/api/token/publisher", map[string]any{"userId": "host-2"}), http.StatusConflict, "CONFLICT")
	wantError(t, survivor.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "viewer-1"}), http.StatusConflict, "CONFLICT")
	if n := survivor.scrape(t).value("stagefleet_broadcasts_ending", nil); n != 1 {
		t.Errorf("stagefleet_broadcasts_ending %v while the end is pending, want 1", n)
	}

	eventually(t, 30*time.Second, func() (bool, string) {
		left, recorded := c.ivsStages(t), survivor.stages(t, "default")
		return len(left) == 0 && len(recorded) == 0, fmt.Sprintf("IVS still has %v, the store %d stage records", left, len(recorded))
	})
	t.Logf("killed the ending instance with %d of %d stages left in IVS; the survivor finished the end %v after the kill",
		leftAtKill, len(before), time.Since(killed).Round(10*time.Millisecond))
	if n := end.emuState(t).Counters["CreateStage"].Calls; n != created {
		t.Errorf("%d CreateStage calls during the end; want none", n-created)
	}
	again := survivor.goLive(t, "default", "host-1")
	if slices.Contains(before, again.StageArn) || again.ParticipantID == host.ParticipantID {
		t.Errorf("the next host went live on %s as %s; want a new origin and participant", again.StageArn, again.ParticipantID)
	}
}

// TestRedisRestart: Redis comes back empty (no persistence). Within about
// one reconcile interval the fleet is rebuilt from IVS, no stage created
// or lost; heartbeats then take every viewer's seat back on its stage.
func TestRedisRestart(t *testing.T) {
	const viewers, capacity = 300, 50
	const reconcile = 2 * time.Second
	c := startCluster(t, 2, map[string]string{
		"STAGE_CAPACITY":     strconv.Itoa(capacity),
		"SCALE_UP_THRESHOLD": "45",
		"SEAT_WAIT":          "30s",
		"RECONCILE_INTERVAL": reconcile.String(),
		"LEASE_TTL":          "2s",
		"HEARTBEAT_TIMEOUT":  "10m",
	}, "--stage-capacity", strconv.Itoa(capacity), "--replica-delay", "200ms")
	host := c.instances[0].goLive(t, "default", "host-1")
	vs := c.seatAll(t, "viewer", viewers, time.Minute)
	c.joinAllEmu(t, vs)
	// Let the fleet settle: scale-up done, everything replicated.
	eventually(t, 15*time.Second, func() (bool, string) {
		st := storeStages(t, c.instances[0])
		for _, s := range st {
			if !s.Seatable {
				return false, "stage " + s.Arn + " does not take viewers yet"
			}
		}
		return len(st) == len(c.ivsStages(t)), "records and IVS differ"
	})
	before := storeStages(t, c.instances[0])
	ivsBefore := c.ivsStages(t)

	c.redis.Restart()
	restarted := time.Now()
	eventually(t, reconcile+3*time.Second, func() (bool, string) {
		// Not storeStages: while Redis comes back a listing may fail,
		// and that is a "not yet", not a failed test.
		r, err := c.instances[1].send(t.Context(), "GET", "/api/stage/list?broadcastId=default", nil, nil)
		if err != nil || r.Status != http.StatusOK {
			return false, fmt.Sprintf("listing stages: %v %v", r, err)
		}
		var list struct {
			Stages []stageData `json:"stages"`
		}
		if err := json.Unmarshal(r.Env.Data, &list); err != nil {
			return false, fmt.Sprintf("listing stages: %v", err)
		}
		now := map[string]stageData{}
		for _, s := range list.Stages {
			now[s.Arn] = s
		}
		if !slices.Equal(slices.Sorted(maps.Keys(now)), ivsBefore) {
			return false, fmt.Sprintf("records %v, IVS had %v", slices.Sorted(maps.Keys(now)), ivsBefore)
		}
		for arn, s := range now {
			if !s.Seatable || s.Role != before[arn].Role {
				return false, fmt.Sprintf("stage %s rebuilt as %+v, was %+v", arn, s, before[arn])
			}
		}
		return true, ""
	})
	t.Logf("%d viewers on %d stages; fleet rebuilt from IVS %v after Redis came back empty (RECONCILE_INTERVAL %v)",
		viewers, len(ivsBefore), time.Since(restarted).Round(time.Millisecond), reconcile)

	// Heartbeats, spread over both instances, re-establish every seat on
	// the viewer's own stage.
	for i, v := range vs {
		r := c.instances[i%2].call(t, "POST", "/api/viewer/heartbeat", map[string]any{
			"userId": v.user, "stageArn": v.token.StageArn, "participantId": v.token.ParticipantID, "seatKey": v.token.SeatKey,
		})
		if r.Status != http.StatusOK {
			t.Fatalf("heartbeat of %s after the restart: %s", v.user, r)
		}
		seat := dataOf[seatData](t, r)
		if seat.StageArn != v.token.StageArn {
			t.Fatalf("heartbeat moved %s from %s to %s", v.user, v.token.StageArn, seat.StageArn)
		}
	}
	after := storeStages(t, c.instances[0])
	for arn, s := range before {
		if after[arn].Seats != s.Seats {
			t.Errorf("stage %s: %d seats after the heartbeats, %d before the restart", arn, after[arn].Seats, s.Seats)
		}
	}
	if got := c.ivsStages(t); !slices.Equal(got, ivsBefore) {
		t.Errorf("IVS has stages %v after the restart, had %v: created or lost", got, ivsBefore)
	}
	c.checkFleet(t, host.ParticipantID, capacity)
}
