package metrics

// The IVS client's reports (ivs.Metrics).

// IVSCall counts a call of op, its retries included, by outcome.
func (m *Metrics) IVSCall(op, outcome string) { m.ivsCalls.WithLabelValues(op, outcome).Inc() }

// IVSRetry counts an attempt of op after its first.
func (m *Metrics) IVSRetry(op string) { m.ivsRetries.WithLabelValues(op).Inc() }

// IVSThrottled counts an attempt of op held back by source: "service"
// (IVS answered ThrottlingException) or "pacer" (it waited for the quota).
func (m *Metrics) IVSThrottled(op, source string) {
	m.ivsThrottles.WithLabelValues(op, source).Inc()
}
