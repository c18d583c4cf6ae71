"""Embedded synthetic acoustic-scene dataset in exactly the TAU Urban Acoustic Scenes 2022 layout.

The product demos and tests on this dataset, so it is built to behave like the real task in the
ways that matter for low-complexity acoustic scene classification: ten scene classes that a small
log-mel CNN separates well but not perfectly, confusable pairs, a location shift between train and
evaluate, and a device shift with devices unseen in training.

Layout (see :mod:`nas_asc.data.tau22`): ``audio/*.wav`` (1 s, 44.1 kHz, 24-bit PCM mono),
``meta.csv``, ``evaluation_setup/fold1_{train,evaluate,test}.csv``,
``split_setup/split{5,10,25,50,100}.csv`` (nested, scene-stratified subsets of the training split,
drawn segment by segment), ``synth.json`` (the generating config and :data:`SYNTH_VERSION`) and
``manifest.sha256`` (size and SHA-256 of every other file, written last as the completion mark).
Names follow ``scene-city-location-segment-index-device.wav``; location ids are numbers unique
within a city, segments are 10-second recordings of which ``*_clips_per_segment`` of the ten
1-second clips are kept.

Scenes. Every clip is a mix of a coloured noise bed and a scene-specific set of ingredients,
synthesised with numpy as shaped spectra (band-limited ingredients on coarse sample grids, so a
clip costs a few small FFTs):

* stationary sources: low ``rumble`` (vehicles, ventilation), ``engine`` harmonics (jittered
  pulse train at a drifting f0 through a resonant low-pass), electric-motor ``whine`` gliding in
  pitch, crowd ``babble`` (formant-shaped noise modulated at syllable rate), nearby ``voices``
  (voiced pulse trains with intonation, formants and syllable rhythm), gusty ``wind``, background
  ``music`` (melody over a bass note);
* events: footsteps (``steps``) and rail ``clacks`` (decaying noise clicks in rhythmic trains),
  rolling ``luggage`` (fast click trains), announcement ``chime`` (two or three bell notes in a
  per-location pattern), tram ``bell``, door ``beeps``, braking ``squeal``, car ``passby`` swells,
  ``birds`` (trills of fast FM chirps), car ``horn``;
* a room: exponentially decaying noise ``reverb`` (long in metro stations and airports, short in
  vehicles, almost none outdoors).

Each scene's recipe (``_RECIPES`` in :mod:`~nas_asc.data.synth.scenes`) gives, per ingredient, the
probability that a location has it, its level range and its parameter ranges. Every location draws
its own variant of its scene (widened by ``location_spread``); every 10-second segment and 1-second
clip jitters the levels (``clip_jitter``) and draws its own events; cities add a colouring of their
own. The confusable pairs of the real task share most ingredients: metro/tram (rumble, whine,
clacks, squeal; tram adds passing traffic and its bell, metro a louder tunnel rumble),
street_pedestrian/public_square (babble, voices, steps, passing cars; the square has birds, wind and
a fountain-like hiss, fewer steps), airport/shopping_mall (babble, steps, chimes, long reverb;
luggage and announcements vs. music) and bus/street_traffic (engine, rumble, passing cars; muffled
inside the bus, bright and with horns outside). On top of that each location is pulled towards its
partner scene's recipe by a random share of up to ``confusion``. Loudness ranges overlap between
scenes and carry per-location and per-clip gain jitter, and the bed colour varies per location and
city, so the mean spectrum is a weak cue; the temporal structure (modulation, chirps, clicks, tonal
glides) is what a CNN learns.

Devices. Device ``a`` is the reference recording of the clean scene (nearly flat). Devices ``b``
and ``c`` are other real devices recording the same scene with their own frequency response,
self-noise and gain. ``s1``-``s6`` are simulated from the device-``a`` recording of the same clip:
a device EQ (high/low-pass, resonances, tilt), added noise and level-relative soft clipping. The
unseen devices ``s4``-``s6`` (telephone-like band, boomy and compressed, tinny and noisy) are
coloured differently from the seen ones. The training split holds device ``a`` for every clip
and ``b``, ``c``, ``s1``-``s3`` for a ``parallel_fraction`` of them (device ``a`` is about 69 % of
it by default); the evaluate split holds parallel recordings of every evaluation clip on all nine
devices. Train and evaluate locations are disjoint.

Calibration (default config, 2,320 training and 1,440 evaluation clips): log-mel (32 kHz,
``n_fft=2048``, hop 744, 64 Mel bins) into a 4-layer CNN with 25k parameters trained 6 epochs
with Adam (one-cycle, peak 5e-3) reaches about 55 % evaluate accuracy (seen devices about 61 %,
unseen about 44 %; device ``a`` about 70 %), while a linear classifier on the mean log-mel reaches
about 37 %. Generating it takes about 15-25 s on two cores.

Determinism. Every location, segment, clip and device rendering draws from its own
``numpy.random.default_rng`` stream keyed by the seed and the clip's coordinates (noise is sliced
from a per-seed noise bank at drawn offsets), so the bytes do not depend on generation order or
the number of worker processes (on a given platform).

Modules (each imports only those above it):

* :mod:`~nas_asc.data.synth.config`: :class:`SynthConfig` and :data:`SYNTH_VERSION`;
* :mod:`~nas_asc.data.synth.sources`: spectral shapes, the noise bank, the clip mix and the
  ingredients (the sound sources);
* :mod:`~nas_asc.data.synth.devices`: the device models and the recording through them;
* :mod:`~nas_asc.data.synth.scenes`: the scene recipes, locations and the clean clip;
* :mod:`~nas_asc.data.synth.layout`: the TAU22 files: clips planned, named and rendered to WAV
  (in worker processes), the metadata and manifest, :func:`generate` and :func:`default_dataset`;
* :mod:`~nas_asc.data.synth.realsize`: :func:`realsize_layout`, a layout of the real size.
"""

from nas_asc.data.synth.config import SYNTH_VERSION, SynthConfig
from nas_asc.data.synth.layout import default_dataset, generate
from nas_asc.data.synth.realsize import realsize_layout

__all__ = ["SYNTH_VERSION", "SynthConfig", "default_dataset", "generate", "realsize_layout"]
