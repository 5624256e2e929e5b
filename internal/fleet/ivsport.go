package fleet

import (
	"context"
	"errors"
	"time"
)

// IVS is what fleet needs of IVS real-time, in fleet's own words:
// internal/ivs maps the AWS SDK onto them, so that fleet depends on no SDK.
type IVS interface {
	CreateStage(ctx context.Context, name string, tags map[string]string) (IVSStage, error)
	GetStage(ctx context.Context, arn string) (IVSStage, error)
	UpdateStage(ctx context.Context, arn, name string) (IVSStage, error)
	DeleteStage(ctx context.Context, arn string) error
	StartReplication(ctx context.Context, sourceArn, destArn, participantID string, reconnectWindow time.Duration) error
	StopReplication(ctx context.Context, sourceArn, destArn, participantID string) error
	ListStages(ctx context.Context, keep func(IVSStage) bool) ([]IVSStage, error)
	ListReplicas(ctx context.Context, sourceArn, participantID string) ([]IVSReplica, error)
	// ListPublishers lists the participants of a session who have
	// published in it: its hosts, never its viewers.
	ListPublishers(ctx context.Context, stageArn, sessionID string) ([]IVSParticipant, error)
}

// IVSStage is a stage as IVS shows it.
type IVSStage struct {
	Arn             string
	Name            string
	ActiveSessionID string
	Tags            map[string]string
	Endpoints       IVSEndpoints
}

// IVSEndpoints are where participants reach a stage.
type IVSEndpoints struct {
	Events string
	Whip   string
	Rtmp   string
	Rtmps  string
}

// IVSReplica is one replication of a participant into a stage.
type IVSReplica struct {
	ParticipantID string
	SourceArn     string
	DestArn       string
	Active        bool
}

// IVSParticipant is a participant of a stage's session.
type IVSParticipant struct {
	ID        string
	UserID    string
	Connected bool
	Published bool
	Replica   bool
}

// Failures of IVS calls that fleet tells apart; an IVS adapter's errors
// unwrap to them.
var (
	ErrIVSNotFound = errors.New("ivs: not found")
	// ErrIVSNotPublishing: StartParticipantReplication on a participant
	// that is not connected and publishing.
	ErrIVSNotPublishing = errors.New("ivs: participant is not publishing")
	ErrIVSConflict      = errors.New("ivs: conflict")
	ErrIVSQuota         = errors.New("ivs: service quota exceeded")
	ErrIVSValidation    = errors.New("ivs: invalid request")
)

// serviceMessage is the service's own text of an IVS error (apps built on
// the JS SDK showed it, e.g. "<id> is not publishing"), when the error
// carries one.
func serviceMessage(err error) (string, bool) {
	var m interface{ ServiceMessage() string }
	if errors.As(err, &m) && m.ServiceMessage() != "" {
		return m.ServiceMessage(), true
	}
	return "", false
}
