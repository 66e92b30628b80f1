"""Small feed-forward blocks shared by the transformer layers and the heads."""
from torch import Tensor, nn


ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU, 'silu': nn.SiLU}


def activation(act: str) -> nn.Module:
    """The activation module of a config name ('relu', 'gelu' or 'silu')."""
    if act not in ACTIVATIONS:
        raise ValueError(f'act must be one of {sorted(ACTIVATIONS)}, got {act!r}')
    return ACTIVATIONS[act]()


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (ReLU unless ``act`` says:
    the box branch of DETR-style heads; DEIM's are SiLU)."""

    def __init__(self, input_dims: int, hidden_dims: int, output_dims: int, num_layers: int,
                 act: str = 'relu') -> None:
        super().__init__()
        dims = [input_dims] + [hidden_dims] * (num_layers - 1) + [output_dims]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class FFN(nn.Module):
    """Position-wise feed-forward block: Linear -> activation -> dropout -> Linear.

    The residual connection, the output dropout and the norm belong to the calling layer.
    """

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float = 0., act: str = 'relu') -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.act(self.linear1(x))))
