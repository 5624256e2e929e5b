package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stagefleet/stagefleet/internal/ivs"
	"github.com/stagefleet/stagefleet/internal/token"
)

// keyIVS is what the signing-key watcher needs of IVS.
type keyIVS interface {
	GetPublicKey(ctx context.Context, arn string) error
	ImportPublicKey(ctx context.Context, name, pemKey string) (string, error)
}

// signingKey keeps the public half of the token signing key in IVS: when
// IVS no longer holds it (deleted by hand, an emulator reset), every token
// signed with it is refused, so it is imported again and tokens name the
// new ARN from then on. The health probe runs its check.
type signingKey struct {
	issuer *token.SelfSigned
	ivs    keyIVS
	log    *slog.Logger
	now    func() time.Time
}

func newSigningKey(issuer *token.SelfSigned, i keyIVS, log *slog.Logger) *signingKey {
	return &signingKey{issuer: issuer, ivs: i, log: log, now: time.Now}
}

// check reads the key from IVS and imports it again if IVS lost it.
func (k *signingKey) check(ctx context.Context) error {
	arn := k.issuer.KeyArn()
	err := k.ivs.GetPublicKey(ctx, arn)
	if errors.Is(err, ivs.ErrNotFound) {
		err = k.reimport(ctx, arn)
	} else if err != nil {
		err = fmt.Errorf("%w for the token signing key %s: %w", errNoAnswer, arn, err)
	}
	if err != nil && ctx.Err() == nil {
		k.log.Error("token signing key", "error", err)
	}
	return err
}

func (k *signingKey) reimport(ctx context.Context, lost string) error {
	pem, err := k.issuer.PublicKeyPEM()
	if err != nil {
		return err
	}
	arn, err := k.ivs.ImportPublicKey(ctx, "stagefleet-"+k.now().UTC().Format("20060102T150405"), pem)
	if err != nil {
		return fmt.Errorf("IVS no longer holds the token signing key %s, so it refuses every token, and importing it again failed: %w", lost, err)
	}
	k.issuer.SetKeyArn(arn)
	k.log.Warn("IVS no longer held the token signing key; imported it again (set IVS_TOKEN_KEY_ARN to the new ARN)", "lost_key", lost, "key", arn)
	return nil
}
