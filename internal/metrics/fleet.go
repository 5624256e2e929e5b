package metrics

import "time"

// The fleet's reports (fleet.Metrics).

// ViewerToken counts a viewer token request's outcome and how long its
// answer took.
// Only an outcome that shows the broadcast exists may give its id a label
// of its own: any client could otherwise spend the label slots on made-up
// ids, one refused request each, and fold the real broadcasts into Other.
func (m *Metrics) ViewerToken(broadcastID, outcome string, took time.Duration) {
	var label string
	switch outcome {
	case "ok", "full", "limit":
		label = m.broadcasts.of(broadcastID)
	default:
		label = m.broadcasts.known(broadcastID)
	}
	m.viewerTokens.WithLabelValues(label, outcome).Inc()
	m.joinSeconds.Observe(seconds(took))
}

// Seated records how long a seated viewer waited for its seat.
func (m *Metrics) Seated(waited time.Duration) { m.seatSeconds.Observe(seconds(waited)) }

// Reconciled counts one reconcile of a broadcast and its duration.
func (m *Metrics) Reconciled(took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.reconciles.WithLabelValues(outcome).Inc()
	m.reconcileSeconds.Observe(seconds(took))
}

// Repaired counts one record a resync repaired from IVS.
func (m *Metrics) Repaired(kind string) { m.repairs.WithLabelValues(kind).Inc() }

// LeaseAcquired counts a lease newly granted to this instance.
func (m *Metrics) LeaseAcquired(name string) { m.leaseAcquired.WithLabelValues(name).Inc() }

// LeaseLost counts a lease lost while held.
func (m *Metrics) LeaseLost(name string) { m.leaseLost.WithLabelValues(name).Inc() }

// EventReceived counts an IVS event on its arrival, lag after its own time.
func (m *Metrics) EventReceived(lag time.Duration) {
	m.eventsReceived.Inc()
	m.eventLag.Observe(seconds(lag))
}

// EventHandled counts what became of an event.
func (m *Metrics) EventHandled(result string) { m.events.WithLabelValues(result).Inc() }
