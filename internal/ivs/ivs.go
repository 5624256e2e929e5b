// Package ivs is stagefleet's adapter over the aws-sdk-go-v2 ivsrealtime
// client: domain types in and out, typed errors, a client-side limiter that
// keeps calls within the account's TPS quotas, and SDK retries with back-off.
package ivs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/token"
)

// Errors of IVS calls, for errors.Is: those fleet tells apart are fleet's
// own, the rest this adapter's.
var (
	ErrNotFound = fleet.ErrIVSNotFound
	// ErrNotPublishing: StartParticipantReplication on a participant that
	// is not connected and publishing. Recognised by the service's message,
	// since AWS does not document the error type.
	ErrNotPublishing = fleet.ErrIVSNotPublishing
	ErrConflict      = fleet.ErrIVSConflict
	ErrQuota         = fleet.ErrIVSQuota
	ErrValidation    = fleet.ErrIVSValidation
	ErrThrottled     = errors.New("ivs: throttled")
	ErrAccessDenied  = errors.New("ivs: access denied")
	ErrUnavailable   = errors.New("ivs: service error")
)

// The values the client takes and gives are fleet's.
type (
	Stage       = fleet.IVSStage
	Endpoints   = fleet.IVSEndpoints
	Replica     = fleet.IVSReplica
	Participant = fleet.IVSParticipant
)

// Error is a failed IVS call: the operation, the service's error code and
// message, and the kind (one of the Err values) it unwraps to.
type Error struct {
	Op      string
	Code    string
	Message string
	Kind    error
	Err     error
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("ivs %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("ivs %s: %s: %s", e.Op, e.Code, e.Message)
}

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// ServiceMessage is the service's own text of the error.
func (e *Error) ServiceMessage() string { return e.Message }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	e := &Error{Op: op, Err: err, Kind: ErrUnavailable}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		e.Code, e.Message = ae.ErrorCode(), exceptionMessage(err, ae)
		switch {
		case strings.Contains(e.Message, "is not publishing"):
			e.Kind = ErrNotPublishing
		case e.Code == "ResourceNotFoundException":
			e.Kind = ErrNotFound
		case e.Code == "ConflictException":
			e.Kind = ErrConflict
		case e.Code == "ServiceQuotaExceededException":
			e.Kind = ErrQuota
		case isThrottleCode(e.Code):
			e.Kind = ErrThrottled
		case e.Code == "ValidationException":
			e.Kind = ErrValidation
		case e.Code == "AccessDeniedException" || e.Code == "PendingVerification":
			e.Kind = ErrAccessDenied
		}
	}
	return e
}

// exceptionMessage returns the service's text of an error. IVS real-time
// sends it as exceptionMessage, which the Go SDK keeps apart from the
// generic message (left empty).
func exceptionMessage(err error, ae smithy.APIError) string {
	var (
		validation *types.ValidationException
		notFound   *types.ResourceNotFoundException
		conflict   *types.ConflictException
		quota      *types.ServiceQuotaExceededException
		denied     *types.AccessDeniedException
		pending    *types.PendingVerification
		internal   *types.InternalServerException
		msg        *string
	)
	switch {
	case errors.As(err, &validation):
		msg = validation.ExceptionMessage
	case errors.As(err, &notFound):
		msg = notFound.ExceptionMessage
	case errors.As(err, &conflict):
		msg = conflict.ExceptionMessage
	case errors.As(err, &quota):
		msg = quota.ExceptionMessage
	case errors.As(err, &denied):
		msg = denied.ExceptionMessage
	case errors.As(err, &pending):
		msg = pending.ExceptionMessage
	case errors.As(err, &internal):
		msg = internal.ExceptionMessage
	}
	if msg != nil && *msg != "" {
		return *msg
	}
	return ae.ErrorMessage()
}

// DefaultQuotas are IVS real-time's default TPS quotas per account (those of
// replication assumed); the client keeps below them.
func DefaultQuotas() map[string]float64 {
	q := map[string]float64{"CreateParticipantToken": 50}
	for _, op := range []string{"CreateStage", "DeleteStage", "GetStage", "ListStages", "UpdateStage",
		"GetParticipant", "ListParticipants", "DisconnectParticipant",
		"StartParticipantReplication", "StopParticipantReplication", "ListParticipantReplicas"} {
		q[op] = 5
	}
	for _, op := range []string{"ImportPublicKey", "GetPublicKey", "ListPublicKeys", "DeletePublicKey"} {
		q[op] = 3
	}
	for _, op := range []string{"TagResource", "UntagResource", "ListTagsForResource"} {
		q[op] = 10
	}
	return q
}

// Options configure a Client.
type Options struct {
	// Config is the AWS configuration (region, credentials); Endpoint, when
	// set, overrides where calls go (the emulator).
	Config   aws.Config
	Endpoint string
	// Quotas are TPS limits per operation; nil means DefaultQuotas.
	Quotas map[string]float64
	// Limiter paces calls to the quotas; nil: this process's own
	// (NewLocalLimiter), which instances sharing an account must not rely
	// on.
	Limiter Limiter
	// MaxAttempts per call, retries included (default 5).
	MaxAttempts int
	// Metrics hears of every call, retry and throttle; nil: nobody.
	Metrics Metrics
}

// Metrics hears what the client does, for monitoring. It is called on
// every call and attempt: it must not block.
type Metrics interface {
	// IVSCall: a call of op (a page of a list), its retries included,
	// ended with outcome (ok, or its error's kind: throttled, not_found,
	// conflict, quota, validation, not_publishing, access_denied,
	// canceled, error).
	IVSCall(op, outcome string)
	// IVSRetry: the SDK's retryer made an attempt of op after its first.
	IVSRetry(op string)
	// IVSThrottled: an attempt of op was held back, by source "service"
	// (IVS answered ThrottlingException) or "pacer" (it waited for the
	// operation's quota in this client).
	IVSThrottled(op, source string)
}

type noMetrics struct{}

func (noMetrics) IVSCall(string, string)      {}
func (noMetrics) IVSRetry(string)             {}
func (noMetrics) IVSThrottled(string, string) {}

// Client calls IVS real-time.
type Client struct {
	api *ivsrealtime.Client
}

// New returns a client.
func New(o Options) *Client {
	if o.Quotas == nil {
		o.Quotas = DefaultQuotas()
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.Metrics == nil {
		o.Metrics = noMetrics{}
	}
	if o.Limiter == nil {
		o.Limiter = NewLocalLimiter(o.Quotas)
	}
	limiters := pacer{limiter: o.Limiter, metrics: o.Metrics}
	api := ivsrealtime.NewFromConfig(o.Config, func(opts *ivsrealtime.Options) {
		if o.Endpoint != "" {
			opts.BaseEndpoint = aws.String(o.Endpoint)
		}
		opts.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = o.MaxAttempts
			// Short: a caller that must wait longer (the controller)
			// backs off itself, and a long SDK back-off would hold it.
			so.MaxBackoff = time.Second
			// Throttling is expected under a join storm; the client-side
			// limiter paces calls, and retries must not run dry.
			so.RateLimiter = ratelimit.None
		})
		// After the retryer: every attempt is paced, retries included,
		// not only the first.
		opts.APIOptions = append(opts.APIOptions, func(st *middleware.Stack) error {
			return st.Finalize.Insert(limiters, "Retry", middleware.After)
		}, func(st *middleware.Stack) error {
			// Before the retryer (a finalize step), so that it sees the
			// call whole: every attempt made, and the outcome of the
			// last; after the operation's name is known.
			return st.Initialize.Add(observer{o.Metrics}, middleware.After)
		})
	})
	return &Client{api: api}
}

// Limiter paces IVS calls to the account's quotas. Reserve takes the next
// turn of op and says how long to wait for it (0: go now); ok false means
// op has no quota. Instances that share one (in Redis) together stay
// within the quotas, which are per account and region, not per instance.
type Limiter interface {
	Reserve(ctx context.Context, op string) (wait time.Duration, ok bool, err error)
}

// Burst is how many calls of an operation may go at once: one short of the
// service's bucket of tps calls. A client that spends all of it and then
// paces at exactly tps leaves the service's bucket empty, so any jitter in
// the calls' arrival is throttled; the spare call absorbs up to 1/tps of
// it.
func Burst(tps float64) int { return max(1, int(tps)-1) }

// LocalLimiter is a Limiter of this process alone: one token bucket per
// operation.
type LocalLimiter struct{ limits map[string]*rate.Limiter }

// NewLocalLimiter paces each operation to its quota (tps; 0: none).
func NewLocalLimiter(quotas map[string]float64) *LocalLimiter {
	l := &LocalLimiter{limits: map[string]*rate.Limiter{}}
	for op, tps := range quotas {
		if tps > 0 {
			l.limits[op] = rate.NewLimiter(rate.Limit(tps), Burst(tps))
		}
	}
	return l
}

// Reserve takes op's next turn.
func (l *LocalLimiter) Reserve(_ context.Context, op string) (time.Duration, bool, error) {
	lim, ok := l.limits[op]
	if !ok {
		return 0, false, nil
	}
	return lim.Reserve().Delay(), true, nil
}

// pacer holds each attempt of an operation to the operation's quota: a
// finalize middleware.
type pacer struct {
	limiter Limiter
	metrics Metrics
}

func (pacer) ID() string { return "stagefleet/QuotaPacer" }

func (p pacer) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	op := awsmiddleware.GetOperationName(ctx)
	if err := p.wait(ctx, op); err != nil {
		return middleware.FinalizeOutput{}, middleware.Metadata{}, &Error{Op: op, Kind: ErrThrottled, Err: err}
	}
	return next.HandleFinalize(ctx, in)
}

// wait waits for op's turn, telling whether the attempt had to wait: the
// reservation says so before the wait, where timing the wait could only
// guess.
func (p pacer) wait(ctx context.Context, op string) error {
	d, ok, err := p.limiter.Reserve(ctx, op)
	if err != nil {
		return fmt.Errorf("taking a turn at the %s quota: %w", op, err)
	}
	if !ok || d == 0 {
		return nil
	}
	p.metrics.IVSThrottled(op, "pacer")
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return fmt.Errorf("waiting %v for the %s quota would exceed the context's deadline", d, op)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// observer reports every call to Metrics: its outcome, and from the
// retryer's record of its attempts, the retries and the attempts IVS
// throttled.
type observer struct{ metrics Metrics }

func (observer) ID() string { return "stagefleet/Metrics" }

func (o observer) HandleInitialize(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	out, md, err := next.HandleInitialize(ctx, in)
	op := awsmiddleware.GetOperationName(ctx)
	if attempts, ok := retry.GetAttemptResults(md); ok {
		for i, a := range attempts.Results {
			if i > 0 {
				o.metrics.IVSRetry(op)
			}
			if throttledByService(a.Err) {
				o.metrics.IVSThrottled(op, "service")
			}
		}
	}
	o.metrics.IVSCall(op, outcome(op, err))
	return out, md, err
}

// throttledByService says whether IVS answered an attempt with its
// throttling error (not this client's pacer).
func throttledByService(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && isThrottleCode(ae.ErrorCode())
}

// isThrottleCode says whether an AWS error code is IVS throttling a call.
func isThrottleCode(code string) bool {
	return code == "ThrottlingException" || code == "TooManyRequestsException"
}

// outcomes name the kinds of failure for Metrics, the more specific first:
// a failure of this client (the pacer's wait) is ErrUnavailable too.
var outcomes = []struct {
	kind error
	name string
}{
	{context.Canceled, "canceled"}, {context.DeadlineExceeded, "canceled"},
	{ErrThrottled, "throttled"}, {ErrNotPublishing, "not_publishing"}, {ErrNotFound, "not_found"},
	{ErrConflict, "conflict"}, {ErrQuota, "quota"}, {ErrValidation, "validation"},
	{ErrAccessDenied, "access_denied"},
}

// outcome names a call's result for Metrics.
func outcome(op string, err error) string {
	if err == nil {
		return "ok"
	}
	err = wrap(op, err)
	for _, o := range outcomes {
		if errors.Is(err, o.kind) {
			return o.name
		}
	}
	return "error"
}

func stageOf(s *types.Stage) Stage {
	st := Stage{Arn: aws.ToString(s.Arn), Name: aws.ToString(s.Name), ActiveSessionID: aws.ToString(s.ActiveSessionId), Tags: s.Tags}
	if e := s.Endpoints; e != nil {
		st.Endpoints = Endpoints{Events: aws.ToString(e.Events), Whip: aws.ToString(e.Whip), Rtmp: aws.ToString(e.Rtmp), Rtmps: aws.ToString(e.Rtmps)}
	}
	return st
}

// CreateStage creates a stage with tags.
func (c *Client) CreateStage(ctx context.Context, name string, tags map[string]string) (Stage, error) {
	const op = "CreateStage"
	out, err := c.api.CreateStage(ctx, &ivsrealtime.CreateStageInput{Name: aws.String(name), Tags: tags})
	if err != nil {
		return Stage{}, wrap(op, err)
	}
	return stageOf(out.Stage), nil
}

// GetStage returns one stage.
func (c *Client) GetStage(ctx context.Context, arn string) (Stage, error) {
	const op = "GetStage"
	out, err := c.api.GetStage(ctx, &ivsrealtime.GetStageInput{Arn: aws.String(arn)})
	if err != nil {
		return Stage{}, wrap(op, err)
	}
	return stageOf(out.Stage), nil
}

// UpdateStage renames a stage.
func (c *Client) UpdateStage(ctx context.Context, arn, name string) (Stage, error) {
	const op = "UpdateStage"
	out, err := c.api.UpdateStage(ctx, &ivsrealtime.UpdateStageInput{Arn: aws.String(arn), Name: aws.String(name)})
	if err != nil {
		return Stage{}, wrap(op, err)
	}
	return stageOf(out.Stage), nil
}

// DeleteStage deletes a stage.
func (c *Client) DeleteStage(ctx context.Context, arn string) error {
	const op = "DeleteStage"
	_, err := c.api.DeleteStage(ctx, &ivsrealtime.DeleteStageInput{Arn: aws.String(arn)})
	return wrap(op, err)
}

// ListStages returns every stage of the account (all pages) for which keep
// returns true.
func (c *Client) ListStages(ctx context.Context, keep func(Stage) bool) ([]Stage, error) {
	p := ivsrealtime.NewListStagesPaginator(c.api, &ivsrealtime.ListStagesInput{MaxResults: aws.Int32(100)})
	return allPages(ctx, c, "ListStages", p, func(page *ivsrealtime.ListStagesOutput) []Stage {
		var out []Stage
		for _, s := range page.Stages {
			st := Stage{Arn: aws.ToString(s.Arn), Name: aws.ToString(s.Name), ActiveSessionID: aws.ToString(s.ActiveSessionId), Tags: s.Tags}
			if keep == nil || keep(st) {
				out = append(out, st)
			}
		}
		return out
	})
}

// pager is what the SDK's paginators have in common.
type pager[O any] interface {
	HasMorePages() bool
	NextPage(ctx context.Context, optFns ...func(*ivsrealtime.Options)) (O, error)
}

// allPages reads every page of a list operation (each paced to the
// operation's quota, like every call).
func allPages[O, T any](ctx context.Context, c *Client, op string, p pager[O], items func(O) []T) ([]T, error) {
	var out []T
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, wrap(op, err)
		}
		out = append(out, items(page)...)
	}
	return out, nil
}

// StartReplication replicates a publishing participant into another stage.
func (c *Client) StartReplication(ctx context.Context, sourceArn, destArn, participantID string, reconnectWindow time.Duration) error {
	const op = "StartParticipantReplication"
	_, err := c.api.StartParticipantReplication(ctx, &ivsrealtime.StartParticipantReplicationInput{
		SourceStageArn:         aws.String(sourceArn),
		DestinationStageArn:    aws.String(destArn),
		ParticipantId:          aws.String(participantID),
		ReconnectWindowSeconds: aws.Int32(int32(reconnectWindow / time.Second)),
	})
	return wrap(op, err)
}

// StopReplication stops one replication.
func (c *Client) StopReplication(ctx context.Context, sourceArn, destArn, participantID string) error {
	const op = "StopParticipantReplication"
	_, err := c.api.StopParticipantReplication(ctx, &ivsrealtime.StopParticipantReplicationInput{
		SourceStageArn:      aws.String(sourceArn),
		DestinationStageArn: aws.String(destArn),
		ParticipantId:       aws.String(participantID),
	})
	return wrap(op, err)
}

// ListReplicas returns every replication of one participant (all pages).
func (c *Client) ListReplicas(ctx context.Context, sourceArn, participantID string) ([]Replica, error) {
	p := ivsrealtime.NewListParticipantReplicasPaginator(c.api, &ivsrealtime.ListParticipantReplicasInput{
		SourceStageArn: aws.String(sourceArn),
		ParticipantId:  aws.String(participantID),
	})
	return allPages(ctx, c, "ListParticipantReplicas", p, func(page *ivsrealtime.ListParticipantReplicasOutput) []Replica {
		out := make([]Replica, len(page.Replicas))
		for i, r := range page.Replicas {
			out[i] = Replica{
				ParticipantID: aws.ToString(r.ParticipantId),
				SourceArn:     aws.ToString(r.SourceStageArn),
				DestArn:       aws.ToString(r.DestinationStageArn),
				Active:        r.ReplicationState == types.ReplicationStateActive,
			}
		}
		return out
	})
}

// ListPublishers returns the participants of a stage's session who have
// published in it (all pages). IVS filters them, so that a stage of ten
// thousand viewers costs one call, not a hundred pages.
func (c *Client) ListPublishers(ctx context.Context, stageArn, sessionID string) ([]Participant, error) {
	p := ivsrealtime.NewListParticipantsPaginator(c.api, &ivsrealtime.ListParticipantsInput{
		StageArn:          aws.String(stageArn),
		SessionId:         aws.String(sessionID),
		FilterByPublished: true,
	})
	return allPages(ctx, c, "ListParticipants", p, func(page *ivsrealtime.ListParticipantsOutput) []Participant {
		out := make([]Participant, len(page.Participants))
		for i, s := range page.Participants {
			out[i] = Participant{
				ID:        aws.ToString(s.ParticipantId),
				UserID:    aws.ToString(s.UserId),
				Connected: s.State == types.ParticipantStateConnected,
				Published: s.Published,
				Replica:   s.ReplicationType == types.ReplicationTypeReplica,
			}
		}
		return out
	})
}

// ImportPublicKey registers a public key for self-signed tokens and returns
// its ARN.
func (c *Client) ImportPublicKey(ctx context.Context, name, pemKey string) (string, error) {
	const op = "ImportPublicKey"
	out, err := c.api.ImportPublicKey(ctx, &ivsrealtime.ImportPublicKeyInput{Name: aws.String(name), PublicKeyMaterial: aws.String(pemKey)})
	if err != nil {
		return "", wrap(op, err)
	}
	return aws.ToString(out.PublicKey.Arn), nil
}

// GetPublicKey reads an imported public key: ErrNotFound once IVS no
// longer holds it, and then no token signed with its private half is
// accepted.
func (c *Client) GetPublicKey(ctx context.Context, arn string) error {
	const op = "GetPublicKey"
	_, err := c.api.GetPublicKey(ctx, &ivsrealtime.GetPublicKeyInput{Arn: aws.String(arn)})
	return wrap(op, err)
}

// Issue makes a token with CreateParticipantToken: the fallback when no
// signing key is configured. IVS picks the participant id.
func (c *Client) Issue(ctx context.Context, req token.Request) (token.Token, error) {
	const op = "CreateParticipantToken"
	var caps []types.ParticipantTokenCapability
	if req.Publish {
		caps = append(caps, types.ParticipantTokenCapabilityPublish)
	}
	if req.Subscribe {
		caps = append(caps, types.ParticipantTokenCapabilitySubscribe)
	}
	minutes := max(1, int32(req.TTL/time.Minute))
	out, err := c.api.CreateParticipantToken(ctx, &ivsrealtime.CreateParticipantTokenInput{
		StageArn:     aws.String(req.StageArn),
		UserId:       aws.String(req.UserID),
		Attributes:   req.Attributes,
		Capabilities: caps,
		Duration:     aws.Int32(minutes),
	})
	if err != nil {
		return token.Token{}, wrap(op, err)
	}
	t := out.ParticipantToken
	return token.Token{Token: aws.ToString(t.Token), ParticipantID: aws.ToString(t.ParticipantId), ExpiresAt: aws.ToTime(t.ExpirationTime)}, nil
}
