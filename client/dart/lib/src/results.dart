/// What the HTTP endpoints answer, as values rather than loose maps.
///
/// Health and unload stay plain maps: their bodies carry backend-specific
/// blocks (`gpu` vs `memory_mb`) that a client only displays.
library;

/// One generated token with the model's log probability of it
/// (`include: ['logprobs']`); [bytes] is authoritative: a character outside
/// ASCII may be split over tokens.
class TokenLogprob {
  const TokenLogprob(this.token, this.logprob, this.bytes);

  factory TokenLogprob.fromJson(Map<String, dynamic> json) => TokenLogprob(
        json['token'].toString(),
        (json['logprob'] as num).toDouble(),
        [for (final b in json['bytes'] as List<dynamic>) (b as num).toInt()],
      );

  final String token;
  final double logprob;
  final List<int> bytes;
}

/// One word of a dictation's final with the model's confidence in it, in
/// (0, 1]; null where no decode scored it (native streaming).
class WordConfidence {
  const WordConfidence(this.text, this.probability);

  factory WordConfidence.fromJson(Map<String, dynamic> json) =>
      WordConfidence(json['text'].toString(), (json['probability'] as num?)?.toDouble());

  final String text;
  final double? probability;
}

/// `POST /v1/audio/transcriptions`; [language]/[duration] only come with
/// `verbose_json`, [logprobs] with `include: ['logprobs']`, [raw] is the
/// JSON body (null for `text`).
class Transcription {
  const Transcription(this.text, {this.language, this.duration, this.raw, this.logprobs});

  final String text;
  final String? language;
  final double? duration;
  final Map<String, dynamic>? raw;
  final List<TokenLogprob>? logprobs;
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

class Segment {
  const Segment(this.text, this.start, this.end, [this.words = const []]);

  factory Segment.fromJson(Map<String, dynamic> json) => Segment(
        json['text'].toString(),
        (json['start'] as num).toDouble(),
        (json['end'] as num).toDouble(),
        [
          for (final word in (json['words'] as List<dynamic>? ?? const []))
            Word.fromJson(word as Map<String, dynamic>),
        ],
      );

  final String text;
  final double start;
  final double end;
  final List<Word> words;

  Map<String, Object> toJson() => {
        'text': text,
        'start': start,
        'end': end,
        'words': [for (final word in words) word.toJson()],
      };
}

/// `POST /v1/align` and `/v1/align/manifest` (the same schema).
class AlignResult {
  const AlignResult(this.text, this.language, this.segments, this.model);

  factory AlignResult.fromJson(Map<String, dynamic> json) => AlignResult(
        (json['text'] ?? '').toString(),
        json['language'] as String?,
        [
          for (final segment in (json['segments'] as List<dynamic>? ?? const []))
            Segment.fromJson(segment as Map<String, dynamic>),
        ],
        (json['model'] ?? '').toString(),
      );

  final String text;
  final String? language;
  final List<Segment> segments;
  final String model;

  Map<String, Object?> toJson() => {
        'text': text,
        'language': language,
        'segments': [for (final segment in segments) segment.toJson()],
        'model': model,
      };
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
