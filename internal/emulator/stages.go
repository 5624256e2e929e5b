package emulator

import (
	"maps"
	"slices"
	"strings"
)

type stageJSON struct {
	Arn                                   string            `json:"arn"`
	Name                                  string            `json:"name"`
	ActiveSessionID                       string            `json:"activeSessionId,omitempty"`
	Tags                                  map[string]string `json:"tags"`
	AutoParticipantRecordingConfiguration map[string]any    `json:"autoParticipantRecordingConfiguration,omitempty"`
	Endpoints                             *stageEndpoints   `json:"endpoints,omitempty"`
}

type stageEndpoints struct {
	Events string `json:"events"`
	Whip   string `json:"whip"`
	RTMP   string `json:"rtmp"`
	RTMPS  string `json:"rtmps"`
}

// Endpoints are the global ones IVS hands out; the emulator serves none of
// them (media does not flow here).
const (
	eventsEndpoint = "wss://global.events.live-video.net"
	whipEndpoint   = "https://global.whip.live-video.net"
)

func (s *stage) json(full bool) stageJSON {
	out := stageJSON{Arn: s.arn, Name: s.name, Tags: cloneTags(s.tags)}
	if s.active != nil {
		out.ActiveSessionID = s.active.id
	}
	if full {
		out.AutoParticipantRecordingConfiguration = s.recCfg
		out.Endpoints = &stageEndpoints{
			Events: eventsEndpoint,
			Whip:   whipEndpoint,
			RTMP:   "rtmp://" + s.id + ".global-contribute-staging.live-video.net/app/",
			RTMPS:  "rtmps://" + s.id + ".global-contribute-staging.live-video.net:443/app/",
		}
	}
	return out
}

func (e *Emulator) stageByArn(arn string) (*stage, *apiError) {
	s, ok := e.st.stages[arn]
	if !ok {
		return nil, notFound("Stage not found: %s", arn)
	}
	return s, nil
}

// stageOrder returns every stage in creation order.
func (e *Emulator) stageOrder() []*stage {
	out := slices.Collect(maps.Values(e.st.stages))
	slices.SortFunc(out, func(a, b *stage) int { return int(a.seq - b.seq) })
	return out
}

type participantTokenConfig struct {
	Duration     *int              `json:"duration"`
	UserID       string            `json:"userId"`
	Attributes   map[string]string `json:"attributes"`
	Capabilities []string          `json:"capabilities"`
}

func (e *Emulator) createStage(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		Name                                  string                   `json:"name"`
		ParticipantTokenConfigurations        []participantTokenConfig `json:"participantTokenConfigurations"`
		Tags                                  map[string]string        `json:"tags"`
		AutoParticipantRecordingConfiguration map[string]any           `json:"autoParticipantRecordingConfiguration"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	if len(e.st.stages) >= e.cfg.MaxStages {
		return nil, newError(errQuota, "Stages per account quota of %d exceeded", e.cfg.MaxStages)
	}
	id := randomID(12)
	s := &stage{
		seq:     e.st.next(),
		arn:     "arn:aws:ivs:" + e.cfg.Region + ":" + e.cfg.AccountID + ":stage/" + id,
		id:      id,
		name:    in.Name,
		tags:    maps.Clone(in.Tags),
		recCfg:  in.AutoParticipantRecordingConfiguration,
		revoked: map[string]bool{},
	}
	e.st.stages[s.arn] = s
	tokens := make([]participantTokenJSON, 0, len(in.ParticipantTokenConfigurations))
	for _, c := range in.ParticipantTokenConfigurations {
		tok, aerr := e.issueToken(s, c)
		if aerr != nil {
			delete(e.st.stages, s.arn)
			return nil, aerr
		}
		tokens = append(tokens, tok)
	}
	e.log.Info("stage created", "stage", s.arn, "name", s.name)
	return map[string]any{"stage": s.json(true), "participantTokens": tokens}, nil
}

type arnInput struct {
	Arn string `json:"arn"`
}

func (e *Emulator) getStage(body []byte) (any, *apiError) {
	in, aerr := decode[arnInput](body)
	if aerr != nil {
		return nil, aerr
	}
	s, aerr := e.stageByArn(in.Arn)
	if aerr != nil {
		return nil, aerr
	}
	return map[string]any{"stage": s.json(true)}, nil
}

func (e *Emulator) updateStage(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		Arn                                   string         `json:"arn"`
		Name                                  *string        `json:"name"`
		AutoParticipantRecordingConfiguration map[string]any `json:"autoParticipantRecordingConfiguration"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	s, aerr := e.stageByArn(in.Arn)
	if aerr != nil {
		return nil, aerr
	}
	if in.Name != nil {
		s.name = *in.Name
	}
	if in.AutoParticipantRecordingConfiguration != nil {
		s.recCfg = in.AutoParticipantRecordingConfiguration
	}
	return map[string]any{"stage": s.json(true)}, nil
}

// deleteStage shuts the stage down: everyone is disconnected and every
// replication into or out of it stops.
func (e *Emulator) deleteStage(body []byte) (any, *apiError) {
	in, aerr := decode[arnInput](body)
	if aerr != nil {
		return nil, aerr
	}
	s, aerr := e.stageByArn(in.Arn)
	if aerr != nil {
		return nil, aerr
	}
	for _, r := range e.st.replications {
		if r.state != replStopped && (r.destArn == s.arn || r.sourceArn == s.arn) {
			e.stopReplication(r, "stage deleted")
		}
	}
	if s.active != nil {
		for _, p := range s.active.participants {
			if p.connected() {
				e.leave(s, p)
			}
		}
	}
	delete(e.st.stages, s.arn)
	e.log.Info("stage deleted", "stage", s.arn)
	return struct{}{}, nil
}

type listInput struct {
	NextToken  string `json:"nextToken"`
	MaxResults *int   `json:"maxResults"`
}

func (e *Emulator) listStages(body []byte) (any, *apiError) {
	in, aerr := decode[listInput](body)
	if aerr != nil {
		return nil, aerr
	}
	items, next, aerr := page(e.stageOrder(), func(s *stage) int64 { return s.seq }, in.NextToken, in.MaxResults)
	if aerr != nil {
		return nil, aerr
	}
	out := make([]stageJSON, len(items))
	for i, s := range items {
		out[i] = s.json(false)
	}
	return withNext(map[string]any{"stages": out}, next), nil
}

type sessionJSON struct {
	SessionID string `json:"sessionId"`
	StartTime string `json:"startTime"`
	EndTime   string `json:"endTime,omitempty"`
}

func (s *session) json() sessionJSON {
	return sessionJSON{SessionID: s.id, StartTime: isoTime(s.start), EndTime: isoTime(s.end)}
}

type sessionInput struct {
	StageArn  string `json:"stageArn"`
	SessionID string `json:"sessionId"`
}

// sessionByID finds a session of a stage; a missing stage or session is nil.
func (e *Emulator) sessionByID(stageArn, sessionID string) (*stage, *session) {
	s, ok := e.st.stages[stageArn]
	if !ok {
		return nil, nil
	}
	for _, ss := range s.sessions {
		if ss.id == sessionID {
			return s, ss
		}
	}
	return s, nil
}

func (e *Emulator) getStageSession(body []byte) (any, *apiError) {
	in, aerr := decode[sessionInput](body)
	if aerr != nil {
		return nil, aerr
	}
	_, ss := e.sessionByID(in.StageArn, in.SessionID)
	if ss == nil {
		return nil, notFound("Stage session not found: %s in %s", in.SessionID, in.StageArn)
	}
	return map[string]any{"stageSession": ss.json()}, nil
}

// listStageSessions lists a stage's sessions oldest first. An unknown stage
// has none: the model gives this operation no not-found error.
func (e *Emulator) listStageSessions(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		StageArn string `json:"stageArn"`
		listInput
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	var all []*session
	if s, ok := e.st.stages[in.StageArn]; ok {
		all = s.sessions
	}
	items, next, aerr := page(all, func(s *session) int64 { return s.seq }, in.NextToken, in.MaxResults)
	if aerr != nil {
		return nil, aerr
	}
	out := make([]sessionJSON, len(items))
	for i, ss := range items {
		out[i] = ss.json()
	}
	return withNext(map[string]any{"stageSessions": out}, next), nil
}

// taggable returns the tags of the stage or public key that arn names.
func (e *Emulator) taggable(arn string) (*map[string]string, *apiError) {
	if s, ok := e.st.stages[arn]; ok {
		return &s.tags, nil
	}
	if k, ok := e.st.keys[arn]; ok {
		return &k.tags, nil
	}
	if !strings.HasPrefix(arn, "arn:aws:ivs:") {
		return nil, validationError("resourceArn %q is not an IVS ARN", arn)
	}
	return nil, notFound("Resource not found: %s", arn)
}

// maxTags is the per-resource tag limit of AWS tagging.
const maxTags = 50

func (e *Emulator) tagResource(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		ResourceArn string            `json:"resourceArn"`
		Tags        map[string]string `json:"tags"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	tags, aerr := e.taggable(in.ResourceArn)
	if aerr != nil {
		return nil, aerr
	}
	merged := cloneTags(*tags)
	maps.Copy(merged, in.Tags)
	if len(merged) > maxTags {
		return nil, validationError("resource would have %d tags; at most %d are allowed", len(merged), maxTags)
	}
	*tags = merged
	return struct{}{}, nil
}

func (e *Emulator) untagResource(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		ResourceArn string   `json:"resourceArn"`
		TagKeys     []string `json:"tagKeys"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	tags, aerr := e.taggable(in.ResourceArn)
	if aerr != nil {
		return nil, aerr
	}
	for _, k := range in.TagKeys {
		delete(*tags, k)
	}
	return struct{}{}, nil
}

func (e *Emulator) listTagsForResource(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		ResourceArn string `json:"resourceArn"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	tags, aerr := e.taggable(in.ResourceArn)
	if aerr != nil {
		return nil, aerr
	}
	return map[string]any{"tags": cloneTags(*tags)}, nil
}

// cloneTags copies tags, never nil: AWS answers "tags": {} for none.
func cloneTags(tags map[string]string) map[string]string {
	if tags == nil {
		return map[string]string{}
	}
	return maps.Clone(tags)
}
