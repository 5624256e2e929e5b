package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime/types"
	"github.com/golang-jwt/jwt/v5"
)

// newStage creates an empty stage and returns its ARN.
func (env *testEnv) newStage(t *testing.T, name string) string {
	t.Helper()
	out, err := env.ivs.CreateStage(ctx(t), &ivsrealtime.CreateStageInput{Name: aws.String(name)})
	if err != nil {
		t.Fatalf("CreateStage: %v", err)
	}
	return *out.Stage.Arn
}

// publisher joins a new participant to a stage and makes it publish. It
// returns the token too, so that the participant can come back with it.
func (env *testEnv) publisher(t *testing.T, stageArn, userID string) (participantID, token string) {
	t.Helper()
	out, err := env.ivs.CreateParticipantToken(ctx(t), &ivsrealtime.CreateParticipantTokenInput{StageArn: aws.String(stageArn), UserId: aws.String(userID)})
	if err != nil {
		t.Fatalf("CreateParticipantToken: %v", err)
	}
	token = *out.ParticipantToken.Token
	j := env.joinStage(t, token)
	env.mustAct(t, "publish", stageArn, j.ParticipantID)
	return j.ParticipantID, token
}

// mustAct is act that fails the test unless the action succeeds.
func (env *testEnv) mustAct(t *testing.T, action, stageArn, participantID string) {
	t.Helper()
	if status := env.act(t, action, stageArn, participantID); status != http.StatusOK {
		t.Fatalf("%s %s: status %d", action, participantID, status)
	}
}

// activeSession returns the stage's active session id, "" when it has none.
func (env *testEnv) activeSession(t *testing.T, stageArn string) string {
	t.Helper()
	out, err := env.ivs.GetStage(ctx(t), &ivsrealtime.GetStageInput{Arn: aws.String(stageArn)})
	if err != nil {
		t.Fatalf("GetStage: %v", err)
	}
	return aws.ToString(out.Stage.ActiveSessionId)
}

func (env *testEnv) participant(t *testing.T, stageArn, sessionID, participantID string) types.Participant {
	t.Helper()
	out, err := env.ivs.GetParticipant(ctx(t), &ivsrealtime.GetParticipantInput{
		StageArn: aws.String(stageArn), SessionId: aws.String(sessionID), ParticipantId: aws.String(participantID),
	})
	if err != nil {
		t.Fatalf("GetParticipant %s: %v", participantID, err)
	}
	return *out.Participant
}

func (env *testEnv) startReplication(t *testing.T, src, dst, participantID string, windowSeconds int32) error {
	t.Helper()
	_, err := env.ivs.StartParticipantReplication(ctx(t), &ivsrealtime.StartParticipantReplicationInput{
		SourceStageArn:         aws.String(src),
		DestinationStageArn:    aws.String(dst),
		ParticipantId:          aws.String(participantID),
		ReconnectWindowSeconds: aws.Int32(windowSeconds),
	})
	return err
}

func (env *testEnv) mustStartReplication(t *testing.T, src, dst, participantID string, windowSeconds int32) {
	t.Helper()
	if err := env.startReplication(t, src, dst, participantID, windowSeconds); err != nil {
		t.Fatalf("StartParticipantReplication: %v", err)
	}
}

// replicas returns what ListParticipantReplicas says about the participant's
// replications out of src.
func (env *testEnv) replicas(t *testing.T, src, participantID string) []types.ParticipantReplica {
	t.Helper()
	out, err := env.ivs.ListParticipantReplicas(ctx(t), &ivsrealtime.ListParticipantReplicasInput{
		SourceStageArn: aws.String(src), ParticipantId: aws.String(participantID),
	})
	if err != nil {
		t.Fatalf("ListParticipantReplicas: %v", err)
	}
	return out.Replicas
}

// replicationState returns the listed state of the one replication of the
// participant from src to dst, "" when it is not listed.
func (env *testEnv) replicationState(t *testing.T, src, dst, participantID string) types.ReplicationState {
	t.Helper()
	var state types.ReplicationState
	n := 0
	for _, r := range env.replicas(t, src, participantID) {
		if aws.ToString(r.DestinationStageArn) == dst {
			state = r.ReplicationState
			n++
		}
	}
	if n > 1 {
		t.Fatalf("replication %s → %s listed %d times", src, dst, n)
	}
	return state
}

// replicating sets up a host publishing in an origin stage and replicated
// into a destination stage with the given reconnect window.
func (env *testEnv) replicating(t *testing.T, windowSeconds int32) (src, dst, participantID string) {
	t.Helper()
	src, participantID = env.host(t, "origin")
	dst = env.newStage(t, "replica")
	env.mustStartReplication(t, src, dst, participantID, windowSeconds)
	return src, dst, participantID
}

func wantReplicationState(t *testing.T, env *testEnv, src, dst, participantID string, want types.ReplicationState) {
	t.Helper()
	if got := env.replicationState(t, src, dst, participantID); got != want {
		t.Fatalf("replication state %q, want %q", got, want)
	}
}

func TestReplicationLifecycle(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, pid := env.host(t, "origin")
	dst := env.newStage(t, "replica")
	srcSession := env.activeSession(t, src)
	if sid := env.activeSession(t, dst); sid != "" {
		t.Fatalf("empty destination has active session %s", sid)
	}

	env.mustStartReplication(t, src, dst, pid, 0)

	dstSession := env.activeSession(t, dst)
	if dstSession == "" {
		t.Fatal("destination has no active session after replication started")
	}
	reps := env.replicas(t, src, pid)
	if len(reps) != 1 {
		t.Fatalf("ListParticipantReplicas: %d replicas, want 1: %+v", len(reps), reps)
	}
	r := reps[0]
	if r.ReplicationState != types.ReplicationStateActive ||
		aws.ToString(r.ParticipantId) != pid ||
		aws.ToString(r.SourceStageArn) != src ||
		aws.ToString(r.SourceSessionId) != srcSession ||
		aws.ToString(r.DestinationStageArn) != dst ||
		aws.ToString(r.DestinationSessionId) != dstSession {
		t.Fatalf("replica %+v, want ACTIVE %s from %s/%s to %s/%s", r, pid, src, srcSession, dst, dstSession)
	}

	list, err := env.ivs.ListParticipants(ctx(t), &ivsrealtime.ListParticipantsInput{StageArn: aws.String(dst), SessionId: aws.String(dstSession)})
	if err != nil {
		t.Fatalf("ListParticipants: %v", err)
	}
	if len(list.Participants) != 1 {
		t.Fatalf("destination lists %d participants, want the replica only: %+v", len(list.Participants), list.Participants)
	}
	listed := list.Participants[0]
	got := env.participant(t, dst, dstSession, pid)
	for name, p := range map[string]struct {
		id, sourceStage, sourceSession string
		typ                            types.ReplicationType
		state                          types.ReplicationState
	}{
		"ListParticipants": {aws.ToString(listed.ParticipantId), aws.ToString(listed.SourceStageArn), aws.ToString(listed.SourceSessionId), listed.ReplicationType, listed.ReplicationState},
		"GetParticipant":   {aws.ToString(got.ParticipantId), aws.ToString(got.SourceStageArn), aws.ToString(got.SourceSessionId), got.ReplicationType, got.ReplicationState},
	} {
		if p.id != pid || p.typ != types.ReplicationTypeReplica || p.state != types.ReplicationStateActive ||
			p.sourceStage != src || p.sourceSession != srcSession {
			t.Errorf("%s shows the replica as %+v, want %s REPLICA ACTIVE from %s/%s", name, p, pid, src, srcSession)
		}
	}
	if got.State != types.ParticipantStateConnected {
		t.Errorf("replica state %s, want CONNECTED", got.State)
	}

	if source := env.participant(t, src, srcSession, pid); source.ReplicationType != types.ReplicationTypeSource {
		t.Errorf("source participant replicationType %q, want SOURCE", source.ReplicationType)
	}
}

func TestReplicationReconnectWindow(t *testing.T) {
	t.Parallel()
	// The cases that come back within the window use 5 s, so that the
	// calls that bring the source back fit in it however loaded the
	// machine; afterWindow is long enough past it for its timer to have
	// fired.
	const window = 5
	const afterWindow = window*time.Second + 1500*time.Millisecond

	t.Run("source republishes within the window", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		src, dst, pid := env.replicating(t, window)
		env.mustAct(t, "unpublish", src, pid)
		wantReplicationState(t, env, src, dst, pid, types.ReplicationStateActive)
		env.mustAct(t, "publish", src, pid)
		time.Sleep(afterWindow)
		wantReplicationState(t, env, src, dst, pid, types.ReplicationStateActive)
	})

	t.Run("source does not come back", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		src, dst, pid := env.replicating(t, 1)
		unpublished := time.Now()
		env.mustAct(t, "unpublish", src, pid)
		wantReplicationState(t, env, src, dst, pid, types.ReplicationStateActive)
		eventually(t, 10*time.Second, "replication STOPPED", func() bool {
			return env.replicationState(t, src, dst, pid) == types.ReplicationStateStopped
		})
		if waited := time.Since(unpublished); waited < time.Second {
			t.Errorf("replication stopped %v after the source unpublished, before its 1 s window passed", waited)
		}
		dstSession := env.replicas(t, src, pid)[0].DestinationSessionId
		replica := env.participant(t, dst, aws.ToString(dstSession), pid)
		if replica.State != types.ParticipantStateDisconnected || replica.ReplicationState != types.ReplicationStateStopped {
			t.Errorf("replica is %s with replication %s, want DISCONNECTED and STOPPED", replica.State, replica.ReplicationState)
		}
		if !hasEvent(env.eventLog(t).Events, evReplicationStopped, pid) {
			t.Errorf("no %q event for %s", evReplicationStopped, pid)
		}
	})

	t.Run("no window stops at once", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		src, dst, pid := env.replicating(t, 0)
		env.mustAct(t, "unpublish", src, pid)
		wantReplicationState(t, env, src, dst, pid, types.ReplicationStateStopped)
	})

	t.Run("source leaves and rejoins within the window", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		src := env.newStage(t, "origin")
		dst := env.newStage(t, "replica")
		pid, token := env.publisher(t, src, "host")
		env.mustStartReplication(t, src, dst, pid, window)

		env.mustAct(t, "leave", src, pid)
		if again := env.joinStage(t, token); again.ParticipantID != pid {
			t.Fatalf("rejoined as %s, want %s", again.ParticipantID, pid)
		}
		env.mustAct(t, "publish", src, pid)
		time.Sleep(afterWindow)
		wantReplicationState(t, env, src, dst, pid, types.ReplicationStateActive)
		// The source left its only session, so it is back in a new one,
		// where it is still the source of a replication.
		if source := env.participant(t, src, env.activeSession(t, src), pid); source.ReplicationType != types.ReplicationTypeSource {
			t.Errorf("rejoined source participant replicationType %q, want SOURCE", source.ReplicationType)
		}
	})
}

func TestReplicationStopsWhenDestinationDeleted(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, dst, pid := env.replicating(t, 0)
	if _, err := env.ivs.DeleteStage(ctx(t), &ivsrealtime.DeleteStageInput{Arn: aws.String(dst)}); err != nil {
		t.Fatalf("DeleteStage: %v", err)
	}
	wantReplicationState(t, env, src, dst, pid, types.ReplicationStateStopped)
}

func TestReplicationStopAndRestart(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, dst, pid := env.replicating(t, 0)
	if _, err := env.ivs.StopParticipantReplication(ctx(t), &ivsrealtime.StopParticipantReplicationInput{
		SourceStageArn: aws.String(src), DestinationStageArn: aws.String(dst), ParticipantId: aws.String(pid),
	}); err != nil {
		t.Fatalf("StopParticipantReplication: %v", err)
	}
	wantReplicationState(t, env, src, dst, pid, types.ReplicationStateStopped)

	env.mustStartReplication(t, src, dst, pid, 0)
	if reps := env.replicas(t, src, pid); len(reps) != 1 || reps[0].ReplicationState != types.ReplicationStateActive {
		t.Fatalf("after restart ListParticipantReplicas = %+v, want one ACTIVE", reps)
	}
}

func TestReplicaDelay(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.ReplicaDelay = 300 * time.Millisecond
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	dst := env.newStage(t, "replica")
	env.mustStartReplication(t, src, dst, pid, 0)

	if reps := env.replicas(t, src, pid); len(reps) != 0 {
		t.Errorf("a replication still starting is listed: %+v", reps)
	}
	err := env.startReplication(t, src, dst, pid, 0)
	if code, _ := apiErrorOf(t, err); code != "ConflictException" {
		t.Errorf("second start while starting: %s, want ConflictException", code)
	}
	eventually(t, 10*time.Second, "replication ACTIVE", func() bool {
		return env.replicationState(t, src, dst, pid) == types.ReplicationStateActive
	})
}

func TestReplicationStopsWhenReplicaDisconnected(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, dst, pid := env.replicating(t, 0)
	if _, err := env.ivs.DisconnectParticipant(ctx(t), &ivsrealtime.DisconnectParticipantInput{
		StageArn: aws.String(dst), ParticipantId: aws.String(pid),
	}); err != nil {
		t.Fatalf("DisconnectParticipant: %v", err)
	}
	wantReplicationState(t, env, src, dst, pid, types.ReplicationStateStopped)
}

func TestReplicationDestinationPublisherLimit(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.MaxPublishers = 1
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	dst, _ := env.host(t, "full")
	err := env.startReplication(t, src, dst, pid, 0)
	if code, msg := apiErrorOf(t, err); code != "ServiceQuotaExceededException" {
		t.Errorf("start into a full destination: %s (%s), want ServiceQuotaExceededException", code, msg)
	}
}

// selfSigned signs participant tokens the way a customer does with a key
// imported by ImportPublicKey.
type selfSigned struct {
	key *ecdsa.PrivateKey
	kid string
}

func newP384(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// importKey generates a key pair and imports its public half.
func (env *testEnv) importKey(t *testing.T) selfSigned {
	t.Helper()
	key := newP384(t)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.ivs.ImportPublicKey(ctx(t), &ivsrealtime.ImportPublicKeyInput{
		Name:              aws.String("self-signing"),
		PublicKeyMaterial: aws.String(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))),
	})
	if err != nil {
		t.Fatalf("ImportPublicKey: %v", err)
	}
	return selfSigned{key: key, kid: *out.PublicKey.Arn}
}

// selfClaims returns valid claims for participant jti in the stage; tests change
// them to make the token wrong.
func selfClaims(stageArn, jti string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"exp":      now.Add(time.Hour).Unix(),
		"iat":      now.Unix(),
		"jti":      jti,
		"resource": stageArn,
		"topic":    stageArn[strings.LastIndex(stageArn, "/")+1:],
		"capabilities": map[string]bool{
			"allow_publish":   true,
			"allow_subscribe": true,
		},
		"user_id":    "user-" + jti,
		"attributes": map[string]string{"role": "guest"},
		"version":    "1.0",
	}
}

func (s selfSigned) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, claims)
	tok.Header["kid"] = s.kid
	signed, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func (env *testEnv) joinStatus(t *testing.T, token string) int {
	t.Helper()
	return env.control(t, http.MethodPost, "/_emulator/participants/join", map[string]string{"token": token}, nil)
}

func TestSelfSignedTokens(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	stage := env.newStage(t, "self-signed")
	other := env.newStage(t, "other")
	signer := env.importKey(t)

	j := env.joinStage(t, signer.sign(t, selfClaims(stage, "guest-1")))
	if j.ParticipantID != "guest-1" || j.StageArn != stage {
		t.Errorf("joined as %s in %s, want guest-1 (the jti) in %s", j.ParticipantID, j.StageArn, stage)
	}

	expired := selfClaims(stage, "guest-2")
	expired["iat"] = time.Now().Add(-2 * time.Hour).Unix()
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	otherTopic := selfClaims(stage, "guest-3")
	otherTopic["topic"] = other[strings.LastIndex(other, "/")+1:]
	missing := stage[:strings.LastIndex(stage, "/")+1] + "NoSuchStage1"
	foreignKey := newP384(t)
	for _, c := range []struct {
		name  string
		token string
		want  int
	}{
		{"expired", signer.sign(t, expired), http.StatusForbidden},
		{"signed by a key not imported, kid of an imported one", selfSigned{key: foreignKey, kid: signer.kid}.sign(t, selfClaims(stage, "guest-4")), http.StatusForbidden},
		{"kid of no imported key", selfSigned{key: foreignKey, kid: signer.kid + "x"}.sign(t, selfClaims(stage, "guest-5")), http.StatusForbidden},
		{"stage does not exist", signer.sign(t, selfClaims(missing, "guest-6")), http.StatusNotFound},
		{"topic names another stage", signer.sign(t, otherTopic), http.StatusForbidden},
	} {
		if got := env.joinStatus(t, c.token); got != c.want {
			t.Errorf("%s: join status %d, want %d", c.name, got, c.want)
		}
	}

	subscriber := selfClaims(stage, "viewer-1")
	subscriber["capabilities"] = map[string]bool{"allow_publish": false, "allow_subscribe": true}
	env.joinStage(t, signer.sign(t, subscriber))
	if got := env.act(t, "publish", stage, "viewer-1"); got != http.StatusForbidden {
		t.Errorf("subscribe-only participant publishing: status %d, want 403", got)
	}
	if !hasEvent(env.eventLog(t).Events, evPublishError, "viewer-1") {
		t.Errorf("no %q event for viewer-1", evPublishError)
	}

	if _, err := env.ivs.DeletePublicKey(ctx(t), &ivsrealtime.DeletePublicKeyInput{Arn: aws.String(signer.kid)}); err != nil {
		t.Fatalf("DeletePublicKey: %v", err)
	}
	if got := env.joinStatus(t, signer.sign(t, selfClaims(stage, "guest-7"))); got != http.StatusForbidden {
		t.Errorf("token signed with a deleted key: join status %d, want 403", got)
	}
}
