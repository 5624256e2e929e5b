package redis

import (
	"context"

	"github.com/stagefleet/stagefleet/internal/store"
)

// HomeGroup is homeGroup, for the tests of package redis_test.
var HomeGroup = homeGroup

// StageGroup answers the seat group of a stage of st, which must be a
// *Store.
func StageGroup(ctx context.Context, st store.Store, arn string) (int, error) {
	ref, err := st.(*Store).lookupStage(ctx, arn)
	return ref.group, err
}
