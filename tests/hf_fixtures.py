"""Tiny random Hugging Face models written with save_pretrained, loaded like a user's local folder."""
from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ("the a is it good bad item great awful alpha beta today "
                                                          "dress fits small large love hate").split()


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    return tok


def tiny_bert(folder: Path, layers: int = 2) -> Path:
    from transformers import BertConfig, BertModel
    import torch

    bert_tokenizer(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def tiny_vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    import torch

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    import torch

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=64, eos_token_id=3, projection_dim=12),
                     vision_config=dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=32, projection_dim=12), projection_dim=12)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    bert_tokenizer(folder)
    return folder


# wav2vec2 and HuBERT share their architecture's settings and feature extractor
SPEECH_CONFIG = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
                     conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2, num_conv_pos_embeddings=8,
                     num_conv_pos_embedding_groups=2, vocab_size=10)


def _speech_model(folder: Path, model_cls, config_cls) -> Path:
    from transformers import Wav2Vec2FeatureExtractor
    import torch

    torch.manual_seed(0)
    model_cls(config_cls(**SPEECH_CONFIG)).save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    extractor.save_pretrained(folder)
    return folder


def tiny_wav2vec2(folder: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return _speech_model(folder, Wav2Vec2Model, Wav2Vec2Config)


def _image_processor(folder: Path, size: int = 16):
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)


def tiny_resnet(folder: Path) -> Path:
    from transformers import ResNetConfig, ResNetModel
    import torch

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                             downsample_in_first_stage=False)).save_pretrained(folder)
    _image_processor(folder, 32)
    return folder


def tiny_convnext(folder: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextModel
    import torch

    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).save_pretrained(folder)
    _image_processor(folder, 32)
    return folder


def tiny_dinov2(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model
    import torch

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             mlp_ratio=2)).save_pretrained(folder)
    _image_processor(folder, 16)
    return folder


def tiny_hubert(folder: Path) -> Path:
    from transformers import HubertConfig, HubertModel

    return _speech_model(folder, HubertModel, HubertConfig)


def tiny_ast(folder: Path) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel
    import torch

    torch.manual_seed(0)
    ASTModel(ASTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, patch_size=16,
                       frequency_stride=16, time_stride=16, max_length=32, num_mel_bins=32)).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=32, sampling_rate=16000).save_pretrained(folder)
    return folder


def tiny_whisper(folder: Path) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    import torch

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=16, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                               decoder_ffn_dim=32, max_source_positions=50, max_target_positions=16,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=1)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1, sampling_rate=16000).save_pretrained(folder)  # 100 frames
    return folder
