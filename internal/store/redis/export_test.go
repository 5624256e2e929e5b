package redis

import (
	"context"

	"github.com/stagefleet/stagefleet/internal/store"
)

// HomeGroup, HomedAt and StageArn are homeGroup, homedAt and testArn,
// for the tests of package redis_test.
var (
	HomeGroup = homeGroup
	HomedAt   = homedAt
	StageArn  = testArn
)

// StageGroup answers the seat group of a stage of st, which must be a
// *Store.
func StageGroup(ctx context.Context, st store.Store, arn string) (int, error) {
	ref, err := st.(*Store).lookupStage(ctx, arn)
	return ref.group, err
}
