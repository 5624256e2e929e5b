package emulator

// These tests drive the emulator with official AWS clients other than the Go
// SDK (the AWS SDK for JavaScript v3 and the AWS CLI), so that its wire
// compatibility is not tuned to one SDK's parser alone. scripts/test installs
// both; a developer without them gets a skip, CI gets a failure.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
)

// jssdkDir is test/jssdk, relative to this package's directory (where go
// test runs).
const jssdkDir = "../../test/jssdk"

// requireTool skips the test when something it needs is not installed,
// except in CI, where a missing dependency means scripts/test did not install
// it and must fail the run rather than let it pass unnoticed.
func requireTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatalf("%s is missing, and CI is set: scripts/test must install it", what)
	}
	t.Skipf("%s is missing; scripts/test installs it", what)
}

func TestJSSDKCompat(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	requireTool(t, err == nil, "node")
	_, err = os.Stat(filepath.Join(jssdkDir, "node_modules", "@aws-sdk", "client-ivs-realtime", "package.json"))
	requireTool(t, err == nil, "test/jssdk/node_modules (run npm ci in test/jssdk)")

	env := newTestEnv(t, quiet())
	runCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(runCtx, node, "compat.mjs")
	cmd.Dir = jssdkDir
	cmd.Env = append(os.Environ(), "EMULATOR_URL="+env.url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if runCtx.Err() != nil {
		t.Fatalf("compat.mjs did not finish in time\nstdout:\n%s\nstderr:\n%s", &stdout, &stderr)
	}
	if err != nil {
		t.Fatalf("compat.mjs: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}

	// The summary is the last line; anything before it is the SDK's chatter.
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var summary struct {
		OK     bool `json:"ok"`
		Checks int  `json:"checks"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &summary); err != nil {
		t.Fatalf("compat.mjs summary %q is not JSON: %v\nstderr:\n%s", lines[len(lines)-1], err, &stderr)
	}
	if !summary.OK || summary.Checks < 15 {
		t.Fatalf("compat.mjs summary = %+v, want ok with at least 15 checks\nstderr:\n%s", summary, &stderr)
	}
	t.Logf("JS SDK: %d checks passed", summary.Checks)
}

// awsCLI runs the AWS CLI against one emulator, isolated from the user's
// configuration and credentials.
type awsCLI struct {
	bin      string
	endpoint string
	env      []string
}

func newAWSCLI(t *testing.T, endpoint string) *awsCLI {
	t.Helper()
	bin, err := exec.LookPath("aws")
	requireTool(t, err == nil, "the aws CLI")
	dir := t.TempDir()
	config := filepath.Join(dir, "config")
	credentials := filepath.Join(dir, "credentials")
	for _, f := range []string{config, credentials} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Drop every AWS_ variable of the caller (a profile, an endpoint URL, a
	// real key) so that only what is set here reaches the CLI.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "AWS_") })
	env = append(env,
		"AWS_ACCESS_KEY_ID=AKIDTEST",
		"AWS_SECRET_ACCESS_KEY=secret",
		"AWS_DEFAULT_REGION=us-east-1",
		"AWS_CONFIG_FILE="+config,
		"AWS_SHARED_CREDENTIALS_FILE="+credentials,
		"AWS_PAGER=",
		"AWS_EC2_METADATA_DISABLED=true",
	)
	return &awsCLI{bin: bin, endpoint: endpoint, env: env}
}

// run runs `aws ivs-realtime args...` and returns its output and exit code.
func (c *awsCLI) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	runCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full := append([]string{"ivs-realtime"}, args...)
	full = append(full, "--endpoint-url", c.endpoint, "--output", "json")
	cmd := exec.CommandContext(runCtx, c.bin, full...)
	cmd.Env = c.env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if runCtx.Err() != nil {
		t.Fatalf("aws %s did not finish in time\nstderr:\n%s", strings.Join(args, " "), &errOut)
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		t.Fatalf("aws %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// ok runs a command that must succeed and decodes its JSON output into out
// (may be nil, for commands that print nothing).
func (c *awsCLI) ok(t *testing.T, out any, args ...string) {
	t.Helper()
	stdout, stderr, code := c.run(t, args...)
	if code != 0 {
		t.Fatalf("aws %s: exit code %d\nstderr:\n%s", strings.Join(args, " "), code, stderr)
	}
	if out == nil {
		return
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("aws %s: output %q is not the JSON expected: %v", strings.Join(args, " "), stdout, err)
	}
}

// fails runs a command that must fail and returns its stderr.
func (c *awsCLI) fails(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := c.run(t, args...)
	if code == 0 {
		t.Fatalf("aws %s succeeded, want a failure; output:\n%s", strings.Join(args, " "), stdout)
	}
	return stderr
}

// operationCalls is how many calls of op the emulator has served.
func operationCalls(emu *Emulator, op string) int {
	return emu.Snapshot().Counters[op].Calls
}

type cliStage struct {
	Arn  string            `json:"arn"`
	Name string            `json:"name"`
	Tags map[string]string `json:"tags"`
}

func TestAWSCLICompat(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.MaxStages = 200
	env := newTestEnv(t, cfg)
	cli := newAWSCLI(t, env.url)

	var created struct {
		Stage cliStage `json:"stage"`
	}
	cli.ok(t, &created, "create-stage", "--name", "demo", "--tags", "team=compat")
	arn := created.Stage.Arn
	if !regexp.MustCompile(`^arn:aws:ivs:us-east-1:\d+:stage/[a-zA-Z0-9-]+$`).MatchString(arn) {
		t.Fatalf("create-stage: arn %q is not a stage ARN", arn)
	}

	var got struct {
		Stage cliStage `json:"stage"`
	}
	cli.ok(t, &got, "get-stage", "--arn", arn)
	if got.Stage.Arn != arn || got.Stage.Name != "demo" || got.Stage.Tags["team"] != "compat" {
		t.Errorf("get-stage = %+v, want the stage created", got.Stage)
	}

	// More stages than one page holds. botocore has no paginator for
	// ListStages, so the CLI returns one page and its nextToken, and a script
	// follows the token with --next-token: each page must continue where the
	// last one stopped.
	for i := range 120 {
		if _, err := env.ivs.CreateStage(ctx(t), &ivsrealtime.CreateStageInput{Name: aws.String(fmt.Sprintf("filler-%03d", i))}); err != nil {
			t.Fatalf("CreateStage filler-%03d: %v", i, err)
		}
	}
	seen := map[string]bool{}
	listed, pages := 0, 0
	for next := ""; pages == 0 || next != ""; pages++ {
		if pages == 10 {
			t.Fatalf("list-stages still has a nextToken after %d pages", pages)
		}
		args := []string{"list-stages"}
		if next != "" {
			args = append(args, "--next-token", next)
		}
		var page struct {
			Stages    []cliStage `json:"stages"`
			NextToken string     `json:"nextToken"`
		}
		cli.ok(t, &page, args...)
		for _, s := range page.Stages {
			seen[s.Arn] = true
		}
		listed += len(page.Stages)
		next = page.NextToken
	}
	if listed != 121 || len(seen) != 121 || !seen[arn] {
		t.Errorf("list-stages returned %d stages (%d distinct, demo listed: %v), want all 121", listed, len(seen), seen[arn])
	}
	if pages != 3 {
		t.Errorf("list-stages took %d pages, want 3 of at most 50 (the model's default maxResults)", pages)
	}

	// botocore does paginate ListParticipantReplicas: with --page-size 2 the
	// CLI itself follows nextToken and merges the pages.
	source, publisher := env.host(t, "cli-source")
	var destinations []string
	for i := range 5 {
		out, err := env.ivs.CreateStage(ctx(t), &ivsrealtime.CreateStageInput{Name: aws.String(fmt.Sprintf("cli-destination-%d", i))})
		if err != nil {
			t.Fatalf("CreateStage: %v", err)
		}
		destinations = append(destinations, *out.Stage.Arn)
		if _, err := env.ivs.StartParticipantReplication(ctx(t), &ivsrealtime.StartParticipantReplicationInput{
			SourceStageArn: aws.String(source), DestinationStageArn: out.Stage.Arn, ParticipantId: aws.String(publisher),
		}); err != nil {
			t.Fatalf("StartParticipantReplication: %v", err)
		}
	}
	callsBefore := operationCalls(env.emu, "ListParticipantReplicas")
	var replicas struct {
		Replicas []struct {
			DestinationStageArn string `json:"destinationStageArn"`
			ReplicationState    string `json:"replicationState"`
		} `json:"replicas"`
		NextToken string `json:"nextToken"`
	}
	cli.ok(t, &replicas, "list-participant-replicas", "--source-stage-arn", source, "--participant-id", publisher, "--page-size", "2")
	var gotDestinations []string
	for _, r := range replicas.Replicas {
		if r.ReplicationState != "ACTIVE" {
			t.Errorf("replica in %s is %s, want ACTIVE", r.DestinationStageArn, r.ReplicationState)
		}
		gotDestinations = append(gotDestinations, r.DestinationStageArn)
	}
	if !slices.Equal(gotDestinations, destinations) || replicas.NextToken != "" {
		t.Errorf("list-participant-replicas = %v (nextToken %q), want every destination in order %v", gotDestinations, replicas.NextToken, destinations)
	}
	if calls := operationCalls(env.emu, "ListParticipantReplicas") - callsBefore; calls != 3 {
		t.Errorf("list-participant-replicas made %d calls, want 3 pages of at most 2", calls)
	}

	var tok struct {
		ParticipantToken struct {
			ParticipantID string `json:"participantId"`
			Token         string `json:"token"`
		} `json:"participantToken"`
	}
	cli.ok(t, &tok, "create-participant-token", "--stage-arn", arn, "--user-id", "viewer")
	if tok.ParticipantToken.ParticipantID == "" || strings.Count(tok.ParticipantToken.Token, ".") != 2 {
		t.Fatalf("create-participant-token = %+v, want a participant id and a JWT", tok.ParticipantToken)
	}

	var tags struct {
		Tags map[string]string `json:"tags"`
	}
	cli.ok(t, &tags, "list-tags-for-resource", "--resource-arn", arn)
	if len(tags.Tags) != 1 || tags.Tags["team"] != "compat" {
		t.Errorf("list-tags-for-resource = %v, want team=compat", tags.Tags)
	}
	cli.ok(t, nil, "tag-resource", "--resource-arn", arn, "--tags", "env=test,owner=cli")
	tags.Tags = nil
	cli.ok(t, &tags, "list-tags-for-resource", "--resource-arn", arn)
	if len(tags.Tags) != 3 || tags.Tags["env"] != "test" || tags.Tags["owner"] != "cli" {
		t.Errorf("after tag-resource, tags = %v, want team, env and owner", tags.Tags)
	}
	cli.ok(t, nil, "untag-resource", "--resource-arn", arn, "--tag-keys", "env", "owner")
	tags.Tags = nil
	cli.ok(t, &tags, "list-tags-for-resource", "--resource-arn", arn)
	if len(tags.Tags) != 1 || tags.Tags["team"] != "compat" {
		t.Errorf("after untag-resource, tags = %v, want only team", tags.Tags)
	}

	// The token's participant never joined, so it is not publishing: the
	// CLI must show the service's error type and text.
	var dest struct {
		Stage cliStage `json:"stage"`
	}
	cli.ok(t, &dest, "create-stage", "--name", "demo-destination")
	stderr := cli.fails(t, "start-participant-replication",
		"--source-stage-arn", arn, "--destination-stage-arn", dest.Stage.Arn,
		"--participant-id", tok.ParticipantToken.ParticipantID)
	want := tok.ParticipantToken.ParticipantID + " is not publishing"
	if !strings.Contains(stderr, "ValidationException") || !strings.Contains(stderr, want) {
		t.Errorf("start-participant-replication stderr = %q, want ValidationException and %q", stderr, want)
	}

	missing := "arn:aws:ivs:us-east-1:123456789012:stage/doesNotExist"
	if stderr := cli.fails(t, "get-stage", "--arn", missing); !strings.Contains(stderr, "ResourceNotFoundException") {
		t.Errorf("get-stage of a missing stage: stderr = %q, want ResourceNotFoundException", stderr)
	}

	cli.ok(t, nil, "delete-stage", "--arn", arn)
	if stderr := cli.fails(t, "get-stage", "--arn", arn); !strings.Contains(stderr, "ResourceNotFoundException") {
		t.Errorf("get-stage after delete-stage: stderr = %q, want ResourceNotFoundException", stderr)
	}
}
