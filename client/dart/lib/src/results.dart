/// What the HTTP endpoints answer, as values rather than loose maps.
///
/// Health and unload stay plain maps: their bodies carry backend-specific
/// blocks (`gpu` vs `memory_mb`) that a client only displays.
library;

/// `POST /v1/audio/transcriptions`; [language]/[duration] only come with
/// `verbose_json`, [raw] is the JSON body (null for `text`).
class Transcription {
  const Transcription(this.text, {this.language, this.duration, this.raw});

  final String text;
  final String? language;
  final double? duration;
  final Map<String, dynamic>? raw;
}

class Word {
  const Word(this.text, this.start, this.end);

  factory Word.fromJson(Map<String, dynamic> json) =>
      Word(json['text'].toString(), (json['start'] as num).toDouble(), (json['end'] as num).toDouble());

  final String text;
  final double start;
  final double end;

  Map<String, Object> toJson() => {'text': text, 'start': start, 'end': end};
}

/// A sentence (or, with `diarize`, one speaker's part of one).
class Segment {
  const Segment(this.text, this.start, this.end, [this.words = const [], this.speaker]);

  factory Segment.fromJson(Map<String, dynamic> json) => Segment(
        json['text'].toString(),
        (json['start'] as num).toDouble(),
        (json['end'] as num).toDouble(),
        [
          for (final word in (json['words'] as List<dynamic>? ?? const []))
            Word.fromJson(word as Map<String, dynamic>),
        ],
        json['speaker'] as String?,
      );

  final String text;
  final double start;
  final double end;
  final List<Word> words;
  final String? speaker;

  Map<String, Object> toJson() => {
        'text': text,
        'start': start,
        'end': end,
        'words': [for (final word in words) word.toJson()],
        if (speaker != null) 'speaker': speaker!,
      };
}

/// One speaker's stretch of speech (`diarize` on the align endpoints).
class Turn {
  const Turn(this.speaker, this.start, this.end);

  factory Turn.fromJson(Map<String, dynamic> json) => Turn(
      json['speaker'].toString(), (json['start'] as num).toDouble(), (json['end'] as num).toDouble());

  final String speaker;
  final double start;
  final double end;

  Map<String, Object> toJson() => {'speaker': speaker, 'start': start, 'end': end};
}

/// `POST /v1/align` and `/v1/align/manifest` (the same schema); [turns]
/// (who spoke when) only with `diarize`.
class AlignResult {
  const AlignResult(this.text, this.language, this.segments, this.model, [this.turns = const []]);

  factory AlignResult.fromJson(Map<String, dynamic> json) => AlignResult(
        (json['text'] ?? '').toString(),
        json['language'] as String?,
        [
          for (final segment in (json['segments'] as List<dynamic>? ?? const []))
            Segment.fromJson(segment as Map<String, dynamic>),
        ],
        (json['model'] ?? '').toString(),
        [
          for (final turn in (json['turns'] as List<dynamic>? ?? const []))
            Turn.fromJson(turn as Map<String, dynamic>),
        ],
      );

  final String text;
  final String? language;
  final List<Segment> segments;
  final String model;
  final List<Turn> turns;

  Map<String, Object?> toJson() => {
        'text': text,
        'language': language,
        'segments': [for (final segment in segments) segment.toJson()],
        'model': model,
        if (turns.isNotEmpty) 'turns': [for (final turn in turns) turn.toJson()],
      };
}

/// What one speaker said in one turn (`diarized_json`).
class SpeakerSegment {
  const SpeakerSegment(this.id, this.speaker, this.start, this.end, this.text);

  factory SpeakerSegment.fromJson(Map<String, dynamic> json) => SpeakerSegment(
        json['id'].toString(),
        json['speaker'].toString(),
        (json['start'] as num).toDouble(),
        (json['end'] as num).toDouble(),
        json['text'].toString(),
      );

  final String id;
  final String speaker;
  final double start;
  final double end;
  final String text;

  Map<String, Object> toJson() => {'id': id, 'speaker': speaker, 'start': start, 'end': end, 'text': text};
}

/// `POST /v1/audio/transcriptions` with `response_format=diarized_json`:
/// speakers are `A`, `B`, … in order of first appearance, or the names of
/// the known speakers they matched.
class Diarization {
  const Diarization(this.text, this.duration, this.segments);

  factory Diarization.fromJson(Map<String, dynamic> json) => Diarization(
        (json['text'] ?? '').toString(),
        (json['duration'] as num? ?? 0).toDouble(),
        [
          for (final segment in (json['segments'] as List<dynamic>? ?? const []))
            SpeakerSegment.fromJson(segment as Map<String, dynamic>),
        ],
      );

  final String text;
  final double duration;
  final List<SpeakerSegment> segments;
}

/// One server-local clip for `/v1/align/manifest`: its timestamps are
/// shifted by [offset] seconds, [id] names it in error messages, and [text]
/// (optional) is its transcript, aligned as given.
class ManifestEntry {
  const ManifestEntry(this.path, {this.offset = 0.0, this.id, this.text});

  final String path;
  final double offset;
  final String? id;
  final String? text;

  Map<String, Object> toJson() => {
        'path': path,
        'offset': offset,
        if (id != null) 'id': id!,
        if (text != null) 'text': text!,
      };
}
