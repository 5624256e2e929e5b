package memory_test

import (
	"testing"

	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	"github.com/stagefleet/stagefleet/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		return memory.New(memory.WithEventLimit(eventLimit))
	}, nil)
}
